"""`mingpt prepare --data.input=hf:...`: a dataset read by `datasets` -> token shards (mingpt/data/shards.py),
tested offline on small local parquet / jsonl files, and `mingpt train` on the shards."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa  # (datasets' own dependency; datasets is in the test extra)
import pyarrow.parquet as pq
import pytest
import torch

from helpers import PROJECT_ROOT
from mingpt.bpe import BPETokenizer
from mingpt.data import TokenShards, TokenStream, load_prepared, shards

EOT = 50256
# documents of very different lengths (some run over several shards), one empty, non-ASCII text,
# and a page that quotes "<|endoftext|>", which is ordinary text inside a document
DOCS = [("Doc %d: " % i) + "the café serves crème brûlée 🍮 at noon. " * (i % 13) + "\n\nend." * (i % 3)
        for i in range(120)]
DOCS[7] = ""
DOCS[11] = "a page that quotes <|endoftext|> in its text"
SHARD = 500  # tokens per shard: the documents make about 16 shards


def write_parquet_folder(folder, docs=DOCS, files=3):
    """A folder of parquet files, as a Hugging Face dataset is stored, read by `datasets`."""
    folder.mkdir()
    per_file = -(-len(docs) // files)
    for f in range(files):
        part = docs[f * per_file:(f + 1) * per_file]
        table = pa.Table.from_pylist([{"id": f * per_file + i, "text": t} for i, t in enumerate(part)])
        pq.write_table(table, folder / f"part-{f:03d}.parquet")
    return folder


@pytest.fixture
def dataset(tmp_path):
    return write_parquet_folder(tmp_path / "dataset")


def expected_tokens():
    tok = BPETokenizer()
    return [i for doc in DOCS for i in tok.encode_batch([doc])[0] + [EOT]]


def shard_ids(out):
    meta = json.loads((out / "meta.json").read_text())
    names = meta["shards"]["val"] + meta["shards"]["train"]
    return names, [np.fromfile(out / name, dtype=np.uint16).tolist() for name in names]


def prepare(source_folder, out, processes=1, batch_documents=8, shard_tokens=SHARD):
    source = shards.Source(str(source_folder))
    return shards.prepare_shards(source, out, BPETokenizer(), shard_tokens, processes, batch_documents)


def test_the_shards_equal_encoding_each_document_in_one_go(dataset, tmp_path):
    out = tmp_path / "out"
    meta = prepare(dataset, out)
    names, ids = shard_ids(out)
    expected = expected_tokens()
    assert sum(ids, []) == expected  # every document in order, each followed by <|endoftext|>
    assert [len(s) for s in ids[:-1]] == [SHARD] * (len(ids) - 1) and 0 < len(ids[-1]) <= SHARD
    assert names[0] == "val_000000.bin" and names[1:] == [f"train_{i:06d}.bin" for i in range(1, len(ids))]
    assert meta["val_tokens"] == SHARD and meta["train_tokens"] == len(expected) - SHARD
    assert meta["documents"] == len(DOCS) and len(ids) > 10
    progress = json.loads((out / shards.PROGRESS_FILE).read_text())
    assert progress["done"] and progress["documents"] == len(DOCS) and progress["skip_tokens"] == 0
    assert (out / "tokenizer.json").exists()


def test_several_processes_give_the_same_shards_as_one(dataset, tmp_path):
    prepare(dataset, tmp_path / "one", processes=1)
    prepare(dataset, tmp_path / "two", processes=2, batch_documents=3)
    assert shard_ids(tmp_path / "one") == shard_ids(tmp_path / "two")


def test_a_preparation_stopped_after_k_shards_resumes_without_redoing_them(dataset, tmp_path, monkeypatch):
    prepare(dataset, tmp_path / "straight")
    out = tmp_path / "stopped"
    finish, written = shards._finish_shard, []

    def stop_after_three(out_dir, progress, tokens):
        if len(written) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the 4th shard is due
        finish(out_dir, progress, tokens)
        written.append(progress.shards[-1]["file"])

    monkeypatch.setattr(shards, "_finish_shard", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare(dataset, out)
    monkeypatch.setattr(shards, "_finish_shard", finish)
    progress = json.loads((out / shards.PROGRESS_FILE).read_text())
    assert len(progress["shards"]) == 3 and not progress["done"] and not (out / "meta.json").exists()
    assert 0 < progress["documents"] < len(DOCS)
    assert progress["place"]["documents"] <= progress["documents"]  # where reading starts again
    before = {name: (out / name).stat().st_mtime_ns for name in written}

    time.sleep(0.01)
    prepare(dataset, out, processes=2, batch_documents=5)  # (the batches may differ on resuming)
    assert shard_ids(out) == shard_ids(tmp_path / "straight")
    assert {name: (out / name).stat().st_mtime_ns for name in written} == before  # not rewritten
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_a_preparation_killed_half_way_resumes_and_ends_with_the_same_shards(dataset, tmp_path):
    """A real process killed by SIGKILL (each shard slowed down, so that the kill lands half-way)."""
    prepare(dataset, tmp_path / "straight")
    out = tmp_path / "killed"
    script = ("import sys, time; from mingpt.data import shards; finish = shards._finish_shard\n"
              "shards._finish_shard = lambda *a: (finish(*a), time.sleep(0.5))\n"
              "from mingpt.cli import main; sys.exit(main(sys.argv[1:]))")
    args = ["prepare", f"--data.input=hf:{dataset}", f"--data.out_dir={out}", f"--data.shard_tokens={SHARD}",
            "--data.processes=1"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script, *args], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    progress = out / shards.PROGRESS_FILE
    while not (progress.exists() and len(json.loads(progress.read_text())["shards"]) >= 3):
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, "the preparation never wrote 3 shards"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    done = len(json.loads(progress.read_text())["shards"])
    assert 3 <= done < len(shard_ids(tmp_path / "straight")[0])
    result = subprocess.run([sys.executable, "-m", "mingpt", *args], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{done} shards done" in result.stderr
    assert shard_ids(out) == shard_ids(tmp_path / "straight")


def test_reading_again_from_a_noted_place_starts_there_not_at_the_first_document(dataset):
    documents = shards.open_documents(shards.Source(str(dataset)))
    assert list(documents.read(0)) == DOCS
    first, place = documents.place_before(0), documents.place_before(70)
    assert (first["documents"], place["documents"]) == (0, 64)  # (noted every 64 documents)
    again = shards.open_documents(shards.Source(str(dataset)))
    assert list(again.read(70, place)) == DOCS[70:]
    # the stream really starts at the place's state: the first document's state read as if it were
    # the 64th's puts document 6 where 70 should be
    wrong = {"documents": 64, "state": first["state"]}
    assert list(shards.open_documents(shards.Source(str(dataset))).read(70, wrong))[:3] == DOCS[6:9]


def test_a_finished_preparation_is_not_redone_and_other_settings_are_refused(dataset, tmp_path):
    out = tmp_path / "out"
    meta = prepare(dataset, out)
    stamp = (out / "val_000000.bin").stat().st_mtime_ns
    assert prepare(dataset, out) == meta and (out / "val_000000.bin").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings \\(shard_tokens\\).*same ones to resume"):
        prepare(dataset, out, shard_tokens=SHARD * 2)


@pytest.mark.slow
def test_training_reads_the_shards_of_a_jsonl_file(tmp_path):
    """`mingpt prepare` on one local jsonl file, then `mingpt train` on its shards."""
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"body": doc}) + "\n" for doc in DOCS))
    out, run = tmp_path / "prepared", tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    common = [sys.executable, "-m", "mingpt"]
    result = subprocess.run([*common, "prepare", f"--data.input=hf:{data}", "--data.text_key=body",
                             f"--data.out_dir={out}", f"--data.shard_tokens={SHARD}", "--data.processes=2"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sum(shard_ids(out)[1], []) == expected_tokens()
    result = subprocess.run([*common, "train", f"--data.dir={out}", f"--system.work_dir={run}",
                             "--model.model_type=None", "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16",
                             "--model.block_size=16", "--trainer.max_iters=4", "--trainer.eval_interval=4",
                             "--trainer.batch_size=4", "--trainer.eval_iters=2", "--trainer.progress_bar=False",
                             "--sample.max_new_tokens=0"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iters"] == 4 and np.isfinite(summary["val_loss"])


def test_token_shards_cut_windows_inside_one_shard_and_one_shard_is_a_token_stream():
    a, b = np.arange(100, dtype=np.uint16), np.arange(1000, 1050, dtype=np.uint16)
    stream = TokenShards([a, b], block_size=10)
    assert len(stream) == 90 + 40
    x, y = stream._cut(torch.tensor([0, 89, 90, 129]))
    assert x[:, 0].tolist() == [0, 89, 1000, 1039] and y[:, -1].tolist() == [10, 99, 1010, 1049]
    xs, ys = stream.get_batch(64, torch.Generator().manual_seed(0))
    assert ((xs[:, 1:] == xs[:, :-1] + 1).all() and (ys == xs + 1).all())  # never across the seam
    one, plain = TokenShards([a], 10), TokenStream(a, 10)
    for got, want in zip(one.get_batch(8, torch.Generator().manual_seed(1)),
                         plain.get_batch(8, torch.Generator().manual_seed(1))):
        assert torch.equal(got, want)


def test_load_prepared_reads_the_listed_shards(dataset, tmp_path):
    out = tmp_path / "out"
    prepare(dataset, out)
    train, val, meta = load_prepared(out, block_size=16)
    assert len(val) == SHARD - 16 and len(train) == meta["train_tokens"] - 16 * len(meta["shards"]["train"])


def test_a_hub_name_while_offline_is_one_line_naming_the_fix(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "mingpt", "prepare", "--data.input=hf:HuggingFaceFW/fineweb-edu",
                             "--data.subset=sample-10BT", f"--data.out_dir={tmp_path / 'out'}"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Hugging Face hub for 'HuggingFaceFW/fineweb-edu'" in lines[0]
    assert "--data.input=hf:FOLDER" in lines[0] and not (tmp_path / "out" / "meta.json").exists()


def test_without_the_datasets_package_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # (import datasets now raises ImportError)
    with pytest.raises(FileNotFoundError, match='pip install "mingpt\\[data\\]"'):
        prepare(tmp_path, tmp_path / "out")


def test_a_missing_text_column_and_a_learnt_tokenizer_are_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match="no column 'content' \\(it has id, text\\).*--data.text_key"):
        shards.prepare_shards(shards.Source(str(dataset), text_key="content"), tmp_path / "out", BPETokenizer(), SHARD)
    from mingpt.jobs.pipeline import prepare_hf_data
    from mingpt.utils import CfgNode
    with pytest.raises(ValueError, match="tokenizer.kind='char'.*--tokenizer.kind=gpt2"):
        prepare_hf_data(CfgNode(input=f"hf:{dataset}"), CfgNode(kind="char"))


def test_a_dataset_too_small_for_two_shards_is_refused_and_writes_nothing(dataset, tmp_path):
    with pytest.raises(ValueError, match="fewer than 2 shards.*lower --data.shard_tokens"):
        prepare(dataset, tmp_path / "out", shard_tokens=10**7)
    assert not list((tmp_path / "out").iterdir())
