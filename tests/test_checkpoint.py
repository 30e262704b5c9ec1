"""Never lose a run: atomic checkpoints, exact resume after SIGKILL, no unpickling, clean signals."""
import json
import os
import random
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from helpers import (final_tensors, latest_iteration, pattern_stream, quick_config, rows_without_timing,
                     start_and_kill, tiny_gpt)
from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.training import checkpoint
from mingpt.training.checkpoint import CheckpointError
from mingpt.training.run_folder import RunFolder
from mingpt.utils import CfgNode

# a small chargpt with dropout on, so that resuming must restore the RNG as well as the data order
RUN = ["--model.model_type=None", "--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32",
       "--model.block_size=32", "--model.embd_pdrop=0.1", "--model.resid_pdrop=0.1",
       "--model.attn_pdrop=0.1", "--trainer.batch_size=8", "--trainer.eval_iters=2",
       "--trainer.log_interval=5", "--trainer.progress_bar=False", "--sample.max_new_tokens=5"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    rng = random.Random(0)
    words = ["the", "king", "queen", "shall", "speak", "of", "love", "and", "war", "to", "me"]
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(3000)))
    return path


def chargpt(corpus, work_dir, *args):
    return [sys.executable, "-m", "mingpt", "chargpt", f"--data.input={corpus}",
            f"--system.work_dir={work_dir}", *RUN, *args]


@pytest.mark.slow
def test_killed_and_resumed_run_is_bitwise_identical_to_a_straight_run(tmp_path, corpus):
    """N = 60 iterations straight, against: killed with SIGKILL after the checkpoint at k = 30
    (checkpoints every 10), then resumed to 60."""
    settings = ["--trainer.max_iters=60", "--trainer.eval_interval=10"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    subprocess.run(chargpt(corpus, straight, *settings), check=True, capture_output=True)
    killed = start_and_kill(chargpt(corpus, interrupted, *settings), interrupted, after_iteration=30)
    assert killed.returncode == -signal.SIGKILL
    k = latest_iteration(interrupted)
    assert 30 <= k < 60
    resumed = subprocess.run(chargpt(corpus, interrupted, *settings, "--system.resume=True"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"iteration {k}" in resumed.stderr and "changed settings" not in resumed.stderr

    a, b = final_tensors(straight), final_tensors(interrupted)
    assert a.keys() == b.keys()
    for name in a:  # weights, optimizer moments and steps, RNG and data-sampler states
        assert torch.equal(a[name], b[name]), name
    assert rows_without_timing(straight) == rows_without_timing(interrupted)


@pytest.mark.slow
def test_sigkill_at_20_random_moments_never_leaves_an_unloadable_run(tmp_path, corpus):
    rng = random.Random(1234)
    delays = [rng.uniform(0.0, 0.4) for _ in range(20)]

    def kill(attempt: int) -> tuple[Path, subprocess.CompletedProcess]:
        work_dir = tmp_path / f"run{attempt}"
        # a checkpoint every iteration, so a kill often lands in the middle of saving one
        return work_dir, start_and_kill(chargpt(corpus, work_dir, "--trainer.max_iters=100000",
                                                "--trainer.eval_interval=1", "--trainer.keep_last=1"),
                                        work_dir, after_iteration=1, extra_delay=delays[attempt])

    with ThreadPoolExecutor(max_workers=2) as pool:  # (two runs at a time: each is mostly its start-up)
        runs = list(pool.map(kill, range(20)))
    for work_dir, killed in runs:
        assert killed.returncode == -signal.SIGKILL
        model = GPT.from_pretrained(work_dir)
        meta, folder = RunFolder(work_dir).find_checkpoint()
        optimizer = model.configure_optimizers(CfgNode(learning_rate=1e-3, betas=(0.9, 0.99), weight_decay=0.0))
        checkpoint.load_state(folder, optimizer)
        assert meta["iter_num"] >= 1


@pytest.mark.slow
def test_sigterm_and_sigint_save_a_checkpoint_and_exit_cleanly(tmp_path, corpus):
    for sig in (signal.SIGTERM, signal.SIGINT):
        work_dir = tmp_path / sig.name
        result = start_and_kill(chargpt(corpus, work_dir, "--trainer.max_iters=100000",
                                        "--trainer.eval_interval=10"), work_dir, after_iteration=10, sig=sig)
        assert result.returncode == 130
        assert "checkpoint saved, continue with --system.resume=true" in result.stderr
        assert "Traceback" not in result.stderr
        stopped_at = latest_iteration(work_dir)
        rows = rows_without_timing(work_dir)
        assert rows[-1]["iter"] == stopped_at  # the checkpoint is of the last iteration run
        assert GPT.from_pretrained(work_dir) is not None


def test_a_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "run" / "checkpoints" / "iter_0000001"
    folder.mkdir(parents=True)
    torch.save({"weights": Payload()}, folder / checkpoint.WEIGHTS_FILE)
    torch.save({"weights": Payload()}, folder / checkpoint.STATE_FILE)
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd, config.vocab_size, config.block_size = 1, 1, 8, 5, 4
    (folder / checkpoint.META_FILE).write_text(json.dumps({"format": 1, "iter_num": 1, "model_config": config.to_dict()}))
    (tmp_path / "run" / "latest.json").write_text(json.dumps({"checkpoint": "checkpoints/iter_0000001"}))
    with pytest.raises(CheckpointError, match="is a pickle / torch.save file, which can run code"):
        GPT.from_pretrained(tmp_path / "run")
    with pytest.raises(CheckpointError, match="is a pickle"):
        checkpoint.load_state(folder)
    assert not marker.exists()


def save_tiny_run(work_dir: Path, **dims) -> GPT:
    model = tiny_gpt(**dims)
    RunFolder(work_dir).save_checkpoint(model, 3, optimizer=torch.optim.AdamW(model.parameters()))
    return model


def test_truncated_corrupt_foreign_and_newer_checkpoints_get_clear_errors(tmp_path):
    save_tiny_run(tmp_path / "ok")
    weights = tmp_path / "ok" / "checkpoints" / "iter_0000003" / checkpoint.WEIGHTS_FILE
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is truncated or corrupt"):
        GPT.from_pretrained(tmp_path / "ok")

    weights.write_bytes(data)
    meta_file = weights.parent / checkpoint.META_FILE
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(CheckpointError, match="has format 99, newer than this mingpt understands"):
        GPT.from_pretrained(tmp_path / "ok")
    meta_file.write_text(json.dumps(meta)[:40])
    with pytest.raises(CheckpointError, match="checkpoint.json' is truncated or corrupt"):
        GPT.from_pretrained(tmp_path / "ok")

    save_tiny_run(tmp_path / "other", vocab_size=12)  # another vocabulary
    _, folder = RunFolder(tmp_path / "other").find_checkpoint()
    with pytest.raises(CheckpointError, match="does not fit this model .* different architecture or vocabulary"):
        checkpoint.load_weights(tiny_gpt(vocab_size=11), folder)


def test_checkpoints_keep_the_last_k_and_the_best(tmp_path):
    model = tiny_gpt()
    run = RunFolder(tmp_path)
    for it in range(1, 7):
        run.save_checkpoint(model, it, keep_last=2, best=it == 2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_0000002", "iter_0000005", "iter_0000006"]
    assert json.loads((tmp_path / "best.json").read_text())["checkpoint"] == "checkpoints/iter_0000002"
    assert run.find_checkpoint()[0]["iter_num"] == 6
    assert run.find_checkpoint("best")[0]["iter_num"] == 2
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


@pytest.fixture
def small_disk(tmp_path):
    """A 1000 KB tmpfs: room for one checkpoint of the model below, not for two."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1000k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({mounted.stderr.strip()}); needs root")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_during_save_keeps_the_previous_checkpoint_and_stops_clearly(small_disk):
    model = tiny_gpt(vocab_size=7, n_layer=2, n_embd=48, n_head=2)  # ~57k parameters: ~0.7 MB a checkpoint (weights + Adam moments)
    work_dir = small_disk / "run"
    trainer = Trainer(quick_config(max_iters=20, eval_interval=5), model, pattern_stream(), work_dir=work_dir)
    with pytest.raises(OSError, match="could not save the checkpoint of iteration 10 .*No space left on "
                                      "device.*the previous checkpoint is intact"):
        trainer.run()
    assert latest_iteration(work_dir) == 5
    assert not list((work_dir / "checkpoints").glob("*.tmp"))
    reloaded = GPT.from_pretrained(work_dir)
    _, folder = RunFolder(work_dir).find_checkpoint()
    checkpoint.load_state(folder, reloaded.configure_optimizers(quick_config()))
