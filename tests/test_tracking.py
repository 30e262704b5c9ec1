"""--trainer.log_to (mingpt/training/tracking.py): a short training run's metrics.jsonl rows also reach
TensorBoard and an offline Weights & Biases run, read back from the files they write."""
import json
import struct
import sys

import pytest

from helpers import assert_close_to, tiny_run
from mingpt.training.run_folder import RunFolder


def tensorboard_scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def wandb_history(run_file):
    """The history records of an offline W&B run's .wandb file: a 7-byte header (':W&B', a magic
    number, a version), then records in LevelDB's log format (32 KiB blocks; each piece a 7-byte
    header: crc32, length, type 1 whole / 2 first / 3 middle / 4 last) holding protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    position, records, pieces = 7, [], b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # (the rest of a block too short for a header is padding)
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            break
        pieces += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return [(r.history.step.num, {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                  for item in r.history.item})
            for r in records if r.WhichOneof("record_type") == "history"]


def test_a_short_run_writes_a_tensorboard_event_file_and_an_offline_wandb_run_with_its_losses(tmp_path,
                                                                                             monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    for setting in ("WANDB__DISABLE_META", "WANDB__DISABLE_STATS"):  # (no system facts, no pip freeze: faster)
        monkeypatch.setenv(setting, "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    work_dir = tmp_path / "run"
    trainer = tiny_run(work_dir, log_to="tensorboard,wandb")  # 6 iterations, a row each, val every 3
    trainer.run()
    rows = RunFolder(work_dir).read_metrics()
    assert [row["iter"] for row in rows] == [1, 2, 3, 4, 5, 6]

    assert list((work_dir / "tensorboard").glob("events.out.tfevents.*"))
    for tag in ("loss", "lr", "val_loss"):
        logged = [(row["iter"], row[tag]) for row in rows if tag in row]
        scalars = tensorboard_scalars(work_dir / "tensorboard", tag)
        assert [s for s, _ in scalars] == [s for s, _ in logged]
        assert_close_to([v for _, v in logged], [v for _, v in scalars], 1)  # (stored as float32: rounded once)

    (run_file,) = (work_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(run_file)
    assert [step for step, _ in history] == [row["iter"] for row in rows]
    for (step, values), row in zip(history, rows):
        assert values["loss"] == row["loss"] and values["lr"] == row["lr"]
        assert values.get("val_loss") == row.get("val_loss")


def test_trackers_are_off_by_default_and_load_nothing(tmp_path):
    sys.modules.pop("mingpt.training.tracking", None)  # (the one module that imports TensorBoard or W&B)
    tiny_run(tmp_path / "run").run()
    assert not (tmp_path / "run" / "tensorboard").exists() and not (tmp_path / "run" / "wandb").exists()
    assert "mingpt.training.tracking" not in sys.modules


def test_tensorboard_alone_gets_the_rows_of_metrics_jsonl(tmp_path):
    work_dir = tmp_path / "run"
    tiny_run(work_dir, log_to=["tensorboard"]).run()
    rows = RunFolder(work_dir).read_metrics()
    scalars = tensorboard_scalars(work_dir / "tensorboard", "loss")
    assert [s for s, _ in scalars] == [row["iter"] for row in rows]
    assert_close_to([row["loss"] for row in rows], [v for _, v in scalars], 1)
    assert not (work_dir / "wandb").exists()


def test_an_unknown_tracker_or_a_missing_package_is_refused_before_training(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown tracker 'mlflow'; choose from tensorboard, wandb"):
        tiny_run(tmp_path / "a", log_to="tensorboard,mlflow")
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(FileNotFoundError, match='needs the wandb package: pip install "mingpt\\[wandb\\]"'):
        tiny_run(tmp_path / "b", log_to="wandb")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
