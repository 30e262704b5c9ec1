"""The `mingpt` command end to end, on a tiny config: train, write the run folder, sample."""
import json
import subprocess
import sys

import pytest

TINY = ["--model.model_type=None", "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16",
        "--model.block_size=16", "--trainer.max_iters=60", "--trainer.eval_interval=30",
        "--trainer.batch_size=8", "--trainer.eval_iters=2", "--trainer.learning_rate=1e-2",
        "--trainer.progress_bar=False"]


def mingpt(*args, module=None):
    command = [sys.executable, "-m", module or "mingpt", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog.\n" * 200)
    return path


@pytest.mark.slow
def test_chargpt_trains_writes_a_run_folder_and_samples(tmp_path, corpus):
    work_dir = tmp_path / "run"
    result = mingpt("chargpt", f"--data.input={corpus}", f"--system.work_dir={work_dir}",
                    "--sample.max_new_tokens=20", *TINY)
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "metrics.jsonl", "summary.json", "loss.png", "tokenizer.json", "latest.json"):
        assert (work_dir / name).exists(), name
    config = json.loads((work_dir / "config.json").read_text())
    assert config["model"]["n_embd"] == 16 and config["trainer"]["max_iters"] == 60
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["iters"] == 60 and summary["val_loss"] < 2.5  # ln(28) = 3.3 at chance
    assert len(result.stdout.strip()) >= 20  # the closing sample

    sample = mingpt("sample", f"--system.work_dir={work_dir}", "--prompt=the ", "--max_new_tokens=30",
                    "--do_sample=False")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("the ") and len(sample.stdout) >= 34
    assert set(sample.stdout) <= set("the quick brown fox jumps over the lazy dog.\n")


@pytest.mark.slow
def test_projects_also_run_as_python_modules(tmp_path):
    result = mingpt(f"--system.work_dir={tmp_path}", "--trainer.max_iters=20", "--trainer.eval_interval=20",
                    "--data.test_size=50", "--trainer.progress_bar=False", module="mingpt.jobs.adder")
    assert result.returncode == 0, result.stderr
    assert 0.0 <= json.loads((tmp_path / "summary.json").read_text())["test_accuracy"] <= 1.0


def test_help_lists_every_key_with_its_default():
    result = mingpt("chargpt", "--help")
    assert result.returncode == 0
    assert "--trainer.max_iters=2000" in result.stdout and "--data.input=''" in result.stdout
    # and what a model part left at None becomes
    assert "gpt3-175b" in result.stdout and "attention_pattern=('global',)" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["chargpt", "--trainer.max_itres=5"], "unknown config key 'trainer.max_itres'"),
    (["chargpt", "--trainer.batch_size=big"], "trainer.batch_size must be of type int"),
    (["chargpt", "--data.input=/no/such/file.txt"], "input file '/no/such/file.txt' does not exist"),
    (["sample", "--system.work_dir=/no/such/run"], "has no tokenizer.json"),
    (["fly"], "unknown job 'fly'"),
])
def test_user_errors_are_one_line_with_a_nonzero_exit(args, message):
    result = mingpt(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_prompt_outside_the_vocabulary_is_refused(tmp_path, corpus):
    work_dir = tmp_path / "run"
    assert mingpt("chargpt", f"--data.input={corpus}", f"--system.work_dir={work_dir}",
                  "--sample.max_new_tokens=1", *TINY[:-5], "--trainer.max_iters=1",
                  "--trainer.progress_bar=False").returncode == 0
    result = mingpt("sample", f"--system.work_dir={work_dir}", "--prompt=QUIZ")
    assert result.returncode == 1
    assert "not in this model's vocabulary: 'IQUZ'" in result.stderr


def test_bench_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = mingpt("bench", "--sizes=chargpt", "--warmup=1", "--repeats=2", "--generate=False",
                    "--baselines=False", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert "chargpt   mingpt" in result.stdout and "MFU" in result.stdout
    data = json.loads(out.read_text())
    row = data["train"][0]
    assert row["impl"] == "mingpt" and row["tokens_per_s"] > 0 and 0 < row["mfu"] < 2
    assert data["peak_gflops"] > 0


def test_a_recipe_and_a_time_budget_from_the_command_line(tmp_path, corpus):
    """--recipe=gpt2 is the job's defaults by name; --trainer.max_seconds ends the run early, as
    max_iters would (evaluated and saved), and the last line says so."""
    work_dir = tmp_path / "run"
    result = mingpt("chargpt", "--recipe=gpt2", f"--data.input={corpus}", f"--system.work_dir={work_dir}",
                    "--sample.max_new_tokens=1", *TINY, "--trainer.max_iters=1000000", "--trainer.max_seconds=1")
    assert result.returncode == 0, result.stderr
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "max_seconds" and summary["iters"] < 1000000 and summary["run_s"] >= 1
    assert f"after {summary['iters']} iterations (ended by max_seconds)" in result.stderr
    assert json.loads((work_dir / "config.json").read_text())["recipe"] == "gpt2"
