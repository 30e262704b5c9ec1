"""`mingpt prepare` -> `mingpt train` -> `mingpt sample`, with each kind of tokenizer."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mingpt.bpe import BPETokenizer
from mingpt.data import read_pieces
from mingpt.data.tokenizers import load as load_tokenizer

TINY = ["--model.model_type=None", "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16",
        "--model.block_size=16", "--trainer.max_iters=20", "--trainer.eval_interval=10",
        "--trainer.batch_size=4", "--trainer.eval_iters=2", "--trainer.progress_bar=False",
        "--sample.max_new_tokens=5"]
TEXT = "".join(f"Line {i}: the café serves crème brûlée 🍮 at {i % 12} o'clock.\n\n  indented\n" for i in range(400))


def mingpt(*args):
    result = subprocess.run([sys.executable, "-m", "mingpt", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_pieces_encode_exactly_like_the_whole_file(corpus):
    tok = BPETokenizer()
    pieces = list(read_pieces(corpus, piece_bytes=500))
    assert len(pieces) > 20 and "".join(pieces) == TEXT
    assert [i for p in pieces for i in tok.encode(p)] == tok.encode(TEXT)


def test_prepare_writes_token_files_that_decode_back_to_the_text(tmp_path, corpus):
    out = tmp_path / "data"
    mingpt("prepare", f"--data.input={corpus}", f"--data.out_dir={out}")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 50257
    train = np.fromfile(out / "train.bin", dtype=np.uint16).tolist()
    val = np.fromfile(out / "val.bin", dtype=np.uint16).tolist()
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val))
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert val[-1] == 50256  # the document ends with <|endoftext|>
    tok = load_tokenizer(out)
    assert tok.decode(train + val[:-1]) == TEXT


def test_two_files_are_two_documents(tmp_path, corpus):
    second = tmp_path / "second.txt"
    second.write_text("Another document.\n" * 50)
    out = tmp_path / "data"
    mingpt("prepare", f"--data.input={corpus},{second}", f"--data.out_dir={out}", "--tokenizer.kind=char")
    tok = load_tokenizer(out)
    assert tok.eot_token is None if hasattr(tok, "eot_token") else True
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"] == [str(corpus), str(second)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bpe", "char", "gpt2"])
def test_train_on_prepared_tokens_then_sample_with_the_runs_tokenizer(tmp_path, corpus, kind):
    data, run = tmp_path / "data", tmp_path / "run"
    mingpt("prepare", f"--data.input={corpus}", f"--data.out_dir={data}", f"--tokenizer.kind={kind}",
           "--tokenizer.vocab_size=300")
    mingpt("train", f"--data.dir={data}", f"--system.work_dir={run}", *TINY)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iters"] == 20 and summary["val_loss"] > 0
    sample = mingpt("sample", f"--system.work_dir={run}", "--prompt=Line 3", "--max_new_tokens=10")
    assert sample.stdout.startswith("Line 3")


@pytest.mark.slow
def test_fine_tuning_starts_from_a_pretrained_run(tmp_path, corpus):
    data, first, second = tmp_path / "data", tmp_path / "first", tmp_path / "second"
    mingpt("prepare", f"--data.input={corpus}", f"--data.out_dir={data}", "--tokenizer.kind=bpe",
           "--tokenizer.vocab_size=300")
    mingpt("train", f"--data.dir={data}", f"--system.work_dir={first}", *TINY, "--trainer.max_iters=60",
           "--trainer.learning_rate=1e-2")
    mingpt("train", f"--data.dir={data}", f"--system.work_dir={second}", f"--init_from={first}", *TINY,
           "--model.block_size=8")
    config = json.loads((second / "config.json").read_text())
    assert config["model"]["block_size"] == 8  # the pretrained 16 positions, cropped
    before = json.loads((first / "summary.json").read_text())["val_loss"]
    after = [json.loads(r) for r in (second / "metrics.jsonl").read_text().splitlines()]
    assert after[0]["loss"] < before + 1.0  # starts from the trained weights, not from ln(300) = 5.7

    other = tmp_path / "other"
    mingpt("prepare", f"--data.input={corpus}", f"--data.out_dir={other}", "--tokenizer.kind=char")
    refused = subprocess.run([sys.executable, "-m", "mingpt", "train", f"--data.dir={other}",
                              f"--system.work_dir={tmp_path / 'third'}", f"--init_from={first}", *TINY],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "was tokenized differently" in refused.stderr


@pytest.mark.slow
def test_words_project_prepares_and_trains_in_one_command(tmp_path, corpus):
    run = tmp_path / "words"
    mingpt("words", f"--data.input={corpus}", f"--system.work_dir={run}", "--tokenizer.vocab_size=300", *TINY)
    assert (run / "data" / "train.bin").exists() and (run / "summary.json").exists()
    assert json.loads((run / "tokenizer.json").read_text())["name"] == "bpe-300"


def test_prepare_refuses_a_corpus_too_small_to_split(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hi")
    result = subprocess.run([sys.executable, "-m", "mingpt", "prepare", f"--data.input={tiny}",
                             f"--data.out_dir={tmp_path / 'out'}"], capture_output=True, text=True)
    assert result.returncode == 1 and "too small" in result.stderr
    assert not (tmp_path / "out" / "train.bin").exists()


def test_a_bad_file_midway_leaves_no_half_written_token_files(tmp_path, corpus):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("fine text\n".encode() * 200 + b"caf\xe9\n")  # found while streaming, after corpus.txt is encoded
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "mingpt", "prepare", f"--data.input={corpus},{bad}",
                             f"--data.out_dir={out}"], capture_output=True, text=True)
    assert result.returncode == 1 and "is not valid UTF-8" in result.stderr
    assert not list(out.glob("*.bin*"))
