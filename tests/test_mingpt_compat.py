"""Code written for minGPT runs unchanged on mingpt and learns at least as well: a script in
minGPT's idiom (tests/mingpt_style/adder.py: its setup_logging(config), CfgNode overrides from
the command line, a per-example Dataset, Trainer defaults, callbacks, generate, and the
tokenizer's `encoder` as minGPT's generate notebook uses it), run end to end as a user would."""
import json
import os
import re
import statistics
import subprocess
import sys

import pytest

from helpers import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "tests" / "mingpt_style" / "adder.py"


def start_script(work_dir, *args) -> subprocess.Popen:
    """The script as a process of one thread (a model this small trains no faster on two)."""
    return subprocess.Popen([sys.executable, str(SCRIPT), f"--system.work_dir={work_dir}",
                             "--trainer.progress_bar=False", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=work_dir.parent, env={**os.environ, "OMP_NUM_THREADS": "1"})


def finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def run_script(work_dir, *args) -> subprocess.CompletedProcess:
    return finished(start_script(work_dir, *args))


def accuracies(stdout: str) -> dict[int, float]:
    return {int(it): float(acc) for it, acc in re.findall(r"iter (\d+): test accuracy ([\d.]+)", stdout)}


def test_a_mingpt_style_script_runs_unchanged(tmp_path):
    work_dir = tmp_path / "adder"
    result = run_script(work_dir, "--trainer.max_iters=500")
    # minGPT's bookkeeping by setup_logging(config): the command line and the config
    assert (work_dir / "args.txt").read_text().split()[1:] == [f"--system.work_dir={work_dir}",
                                                              "--trainer.progress_bar=False", "--trainer.max_iters=500"]
    config = json.loads((work_dir / "config.json").read_text())
    assert config["model"]["model_type"] == "gpt-nano" and config["trainer"]["max_iters"] == 500
    assert "endoftext 50256 Hello world" in result.stdout  # BPETokenizer().encoder.encoder[...]
    assert re.search(r"iter_dt [\d.]+ms; iter 400: train loss [\d.]+", result.stdout)
    assert list(accuracies(result.stdout)) == [500]
    assert (work_dir / "model.pt").stat().st_size > 10_000  # torch.save(model.state_dict()) in the callback
    # minGPT's defaults: a constant learning rate and an output head of its own
    assert "lr_schedule: 'constant'" in result.stdout and "tie_embeddings: False" in result.stdout


@pytest.mark.slow
def test_the_mingpt_style_adder_learns_as_well_as_on_mingpt(tmp_path):
    """minGPT's adder reaches 98.8% held-out accuracy at 2000 iterations (gpt-nano, lr 5e-4
    constant, batch 64). Three seeds here, each 2000 iterations, side by side."""
    runs = {seed: start_script(tmp_path / f"seed{seed}", f"--system.seed={seed}") for seed in (1, 2, 3)}
    finals = []
    for seed, process in runs.items():
        curve = accuracies(finished(process).stdout)
        assert list(curve) == [500, 1000, 1500, 2000]
        print(f"seed {seed}: {curve}")
        finals.append(curve[2000])
    assert statistics.median(finals) >= 0.98 and min(finals) >= 0.95, finals
