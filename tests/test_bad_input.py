"""Every mistake a user can make gets one clear line, a non-zero exit, no traceback, nothing lost."""
import json

import pytest

from mingpt.cli import run_job

TINY = ["--model.model_type=None", "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16",
        "--model.block_size=16", "--trainer.max_iters=4", "--trainer.eval_interval=2",
        "--trainer.batch_size=4", "--trainer.eval_iters=1", "--trainer.progress_bar=False",
        "--sample.max_new_tokens=2"]


def run(capsys, job, *args):
    """Run a job in this process; return (exit status, what it printed on stderr)."""
    status = run_job(job, list(args))
    err = capsys.readouterr().err
    return status, err


def assert_one_clear_line(status, err, message, expected_status=1):
    """The error is the one line `mingpt <job>: error: ...` (progress lines may come before it)."""
    assert status == expected_status, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("mingpt ")]
    assert len(errors) == 1 and errors == err.strip().splitlines()[-1:], err
    assert message in errors[0]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("to be or not to be, that is the question.\n" * 100)
    return path


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    work_dir = tmp_path / "run"
    status, err = run(capsys, "chargpt", f"--data.input={corpus}", f"--system.work_dir={work_dir}", *TINY)
    assert status == 0, err
    return work_dir


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary"),
    (b"na\xefve caf\xe9\n" * 10, "is not valid UTF-8"),
    (b"short", "the text has 4 tokens, fewer than block_size + 1 = 17"),
])
def test_bad_input_text(tmp_path, capsys, content, message):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    status, err = run(capsys, "chargpt", f"--data.input={path}", f"--system.work_dir={tmp_path / 'run'}", *TINY)
    assert_one_clear_line(status, err, message)
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("args, message, expected_status", [
    (["--trainer.max_itres=5"], "unknown config key 'trainer.max_itres'; valid keys here are:", 2),
    (["--trainer.batch_size=2.5"], "trainer.batch_size must be of type int", 2),
    # a value its key does not allow is a config error too (exit 2), found before any work
    (["--model.n_embd=18", "--model.n_head=4"], "n_embd=18 must be divisible by n_head=4", 2),
    (["--trainer.learning_rate=0"], "trainer.learning_rate=0.0 must be > 0", 2),
    (["--trainer.learning_rate=-1e-3"], "trainer.learning_rate=-0.001 must be > 0", 2),
    (["--trainer.batch_size=0"], "trainer.batch_size=0 must be >= 1", 2),
    (["--model.block_size=0"], "model.block_size=0 must be >= 1", 2),
    (["--trainer.dtype=bf17"], "trainer.dtype='bf17' must be one of 'auto', 'fast', 'fp32', 'bf16', 'fp16'", 2),
])
def test_impossible_configuration(tmp_path, corpus, capsys, args, message, expected_status):
    status, err = run(capsys, "chargpt", f"--data.input={corpus}", f"--system.work_dir={tmp_path / 'run'}",
                      *TINY, *args)
    assert_one_clear_line(status, err, message, expected_status)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_prompts_outside_the_vocabulary_or_longer_than_the_context(trained, capsys):
    status, err = run(capsys, "sample", f"--system.work_dir={trained}", "--prompt=XYZ")
    assert_one_clear_line(status, err, "not in this model's vocabulary: 'XYZ'")
    status, err = run(capsys, "sample", f"--system.work_dir={trained}", "--prompt=" + "to be " * 5)
    assert_one_clear_line(status, err, "the prompt is 30 tokens, longer than the model's context of 16")


def test_an_existing_run_is_never_overwritten_silently(trained, corpus, capsys):
    before = (trained / "metrics.jsonl").read_text()
    status, err = run(capsys, "chargpt", f"--data.input={corpus}", f"--system.work_dir={trained}", *TINY)
    assert_one_clear_line(status, err, "already holds a run; continue it with --system.resume=true, "
                                       "start over with --system.overwrite=true")
    assert (trained / "metrics.jsonl").read_text() == before
    status, err = run(capsys, "chargpt", f"--data.input={corpus}", f"--system.work_dir={trained}", *TINY,
                      "--system.overwrite=True")
    assert status == 0, err


def test_resuming_needs_a_checkpoint_and_the_same_architecture(tmp_path, trained, corpus, capsys):
    status, err = run(capsys, "chargpt", f"--data.input={corpus}", f"--system.work_dir={tmp_path / 'new'}",
                      *TINY, "--system.resume=True")
    assert_one_clear_line(status, err, "nothing to resume")
    status, err = run(capsys, "chargpt", f"--data.input={corpus}", f"--system.work_dir={trained}", *TINY,
                      "--system.resume=True", "--model.n_layer=2", "--trainer.max_iters=8")
    assert_one_clear_line(status, err, "cannot resume iter_0000004 with model.n_layer=2: it was trained with "
                                       "model.n_layer=1, and a run keeps its model")


def test_broken_checkpoints_are_refused_with_a_clear_line(trained, capsys):
    """The newest checkpoint damaged: loading falls back to the one before, with a warning
    naming what was skipped; named explicitly, the damaged one is refused in one line."""
    name = json.loads((trained / "latest.json").read_text())["checkpoint"]
    folder = trained / name
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    status, err = run(capsys, "sample", f"--system.work_dir={trained}", "--max_new_tokens=2")
    assert status == 0, err
    assert f"skipped the damaged {folder.name}" in err and "is truncated or corrupt" in err
    assert "using iter_0000002" in err
    status, err = run(capsys, "sample", f"--system.work_dir={trained}", f"--system.checkpoint={folder.name}")
    assert_one_clear_line(status, err, "is truncated or corrupt")
    meta = json.loads((folder / "checkpoint.json").read_text())
    (folder / "checkpoint.json").write_text(json.dumps({**meta, "format": 7}))
    status, err = run(capsys, "sample", f"--system.work_dir={trained}", f"--system.checkpoint={folder.name}")
    assert_one_clear_line(status, err, "newer than this mingpt understands")
    status, err = run(capsys, "sample", f"--system.work_dir={trained}", "--system.checkpoint=iter_9")
    assert_one_clear_line(status, err, "no checkpoint 'iter_9'")


def test_a_work_dir_that_cannot_be_written(tmp_path, corpus, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    status, err = run(capsys, "chargpt", f"--data.input={corpus}", f"--system.work_dir={blocker / 'run'}", *TINY)
    assert_one_clear_line(status, err, "cannot write to")


def test_fine_tuning_with_a_longer_context_than_the_model_is_refused(tmp_path, corpus, capsys):
    data, first = tmp_path / "data", tmp_path / "first"
    assert run(capsys, "prepare", f"--data.input={corpus}", f"--data.out_dir={data}", "--tokenizer.kind=char")[0] == 0
    assert run(capsys, "train", f"--data.dir={data}", f"--system.work_dir={first}", *TINY)[0] == 0
    status, err = run(capsys, "train", f"--data.dir={data}", f"--system.work_dir={tmp_path / 'second'}",
                      f"--init_from={first}", *TINY, "--model.block_size=32")
    assert_one_clear_line(status, err, "model.block_size=32 is larger than the 16 positions")


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        run_job("chargpt", [f"--data.input={tmp_path / 'missing.txt'}", "--debug"])
