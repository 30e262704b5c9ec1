"""Helpers the tests share: tiny models and data, quick trainer settings, reading runs, and numeric
tolerances in ulps at the magnitude compared (assert_close_to; MINGPT_SHOW_ULPS=FILE notes each)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from mingpt.data import TokenStream
from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.training import checkpoint
from mingpt.training.run_folder import RunFolder

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Numeric tolerances, in units in the last place (ulps) of the dtype compared, at the magnitude
# compared (assert_close_to). CPUs sum the products of a matmul in different orders (AVX2,
# AVX-512, AMX; MKL or oneDNN), so two exact computations of the same thing differ by a few ulps
# of what they add up: a few per reduction, more through a chain of them.
ULPS_OP = 16  # one kernel against another doing the same sums (a matmul, attention, a norm), of up to 64 terms
ULPS_FORWARD = 64  # a whole forward pass (a few layers) against another implementation of it
ULPS_TRAINING = 64  # the weights after a few optimizer steps, at the magnitude of all of them
# DiLoCo's packings of the outer gradient: one step of their rounding, relative to the largest value packed
PACKING_PRECISION = {"fp32": torch.finfo(torch.float32).eps, "bf16": torch.finfo(torch.bfloat16).eps, "int8": 1 / 127}
SHAKESPEARE = PROJECT_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
STEPS, BATCH = 6, 4  # the distributed tests: k optimizer steps; b examples per process (1 process: 2b)


# every option since GPT-2 at once (tests/test_options.py tests each alone)
MODEL_OPTIONS = dict(position_encoding="rope", norm="rmsnorm", qk_norm=True, activation="relu2", bias=False,
                     logit_softcap=15.0, n_kv_head=1, zero_init_projections=True,
                     attention_pattern=("local", "global"), window_size=5)


def tiny_gpt(vocab_size: int = 11, block_size: int = 16, dropout: float = 0.0, options: dict | None = None,
             **dims) -> GPT:
    """A 2-layer, 32-dim GPT-2 (head tied to the embedding, as GPT-2's), with model options if given."""
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd = dims.get("n_layer", 2), dims.get("n_head", 2), dims.get("n_embd", 32)
    config.vocab_size, config.block_size = vocab_size, block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = dropout
    config.tie_embeddings = True
    config.merge_from_dict(options or {})
    return GPT(config)


def ulps_of_sums(terms: int) -> float:
    """ULPS_OP for sums of more terms: n roundings in another order add up like sqrt(n) of them."""
    return ULPS_OP * max(1.0, math.sqrt(terms / 64))


def ulps_apart(reference, got, dtype: torch.dtype | None = None) -> float:
    """How far got is from reference, in ulps of dtype (the computation's: by default a floating
    tensor's, else float32's) at the magnitude compared: max |got - reference| / (eps(dtype) x the
    largest |value| of either). Numbers, lists and tensors alike, compared in float64."""
    if dtype is None:  # the computation's: a floating tensor's (got's first), else float32's (Python numbers)
        tensors = [t for t in (got, reference) if torch.is_tensor(t) and t.is_floating_point()]
        dtype = tensors[0].dtype if tensors else torch.float32
    ref, out = (t.detach().double() if torch.is_tensor(t) else torch.tensor(t, dtype=torch.float64)
                for t in (reference, got))
    assert ref.shape == out.shape, f"shapes differ: {tuple(ref.shape)} and {tuple(out.shape)}"
    magnitude = max(ref.abs().max().item(), out.abs().max().item(), torch.finfo(dtype).tiny)
    return (out - ref).abs().max().item() / (torch.finfo(dtype).eps * magnitude)


def states_ulps_apart(reference: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> float:
    """How far two models' weights are apart (got's names are all in reference), in ulps at the
    magnitude of all of them: Adam divides each gradient by its own scale, so where a gradient is
    nearly zero the order of float sums shows in the update at the size of the learning rate, not
    of that weight (test_trainer.py's test_gradient_accumulation_matches_one_big_batch)."""
    assert got.keys() <= reference.keys(), sorted(got.keys() - reference.keys())
    names = sorted(got)
    return ulps_apart(torch.cat([reference[n].flatten() for n in names]), torch.cat([got[n].flatten() for n in names]))


def assert_close_to(reference, got, ulps: float = ULPS_OP, dtype: torch.dtype | None = None, msg: str = "") -> None:
    """Assert that got is within `ulps` ulps of reference (ulps_apart): a tolerance that follows
    from the precision and the size of the numbers, not from the machine a test was written on."""
    apart = ulps_apart(reference, got, dtype)
    if os.environ.get("MINGPT_SHOW_ULPS"):  # a file to note every comparison in: how close a CPU comes
        frame = traceback.extract_stack()[-2]
        with open(os.environ["MINGPT_SHOW_ULPS"], "a") as f:
            f.write(f"{apart:.2f} of {ulps} ulps at {Path(frame.filename).name}:{frame.lineno}\n")
    assert apart <= ulps, f"{msg} {apart:.1f} ulps apart, allowed {ulps}".strip()


def quick_config(**overrides):
    """Trainer settings for a few quick CPU iterations (cosine decay, as mingpt's jobs use)."""
    c = Trainer.get_default_config()
    c.device, c.batch_size, c.max_iters, c.progress_bar, c.log_interval = "cpu", 8, 30, False, 5
    c.learning_rate, c.eval_interval, c.eval_iters, c.lr_schedule = 3e-3, 10, 4, "cosine"
    for key, value in overrides.items():
        setattr(c, key, value)
    return c


def pattern_stream(n=4000, block_size=16):
    return TokenStream(torch.arange(n) % 7, block_size)  # an easily learnt cycle


class Bigram(nn.Module):
    """Not a GPT: the Trainer must not care."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, x, y=None):
        logits = self.table(x)
        loss = None if y is None else nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        return logits, loss


def tiny_run(work_dir: Path | None = None, resume: bool = False, model_options: dict | None = None,
             **overrides) -> Trainer:
    """A Trainer for a tiny GPT (2 layers, 32 dims, block 16) on a learnable cycle of 7 tokens,
    seeded alike everywhere; the default lr (3e-4) without decay, so that runs cut short and
    resumed match straight ones. tests/dist_worker.py runs it under torchrun, the tests in one
    process, so that only the number of processes differs."""
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=11, options=model_options)
    data = TokenStream(torch.arange(4000) % 7, 16)
    c = Trainer.get_default_config()
    c.device, c.max_iters, c.batch_size, c.lr_schedule = "cpu", STEPS, BATCH, "constant"
    c.progress_bar, c.log_interval, c.eval_interval, c.eval_iters = False, 1, 3, 2
    c.merge_from_dict(overrides)
    return Trainer(c, model, data, data, work_dir=work_dir, resume=resume)


def latest_iteration(work_dir: Path) -> int:
    """The iteration of the checkpoint latest.json names (-1 before the first one)."""
    try:
        name = json.loads((work_dir / "latest.json").read_text())["checkpoint"]
    except FileNotFoundError:
        return -1
    return int(name.rsplit("_", 1)[-1])


def start_and_kill(command, work_dir: Path, after_iteration: int, extra_delay: float = 0.0,
                   sig=signal.SIGKILL) -> subprocess.CompletedProcess:
    """Start a run, wait until it has a checkpoint at after_iteration or later, then signal it."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while latest_iteration(work_dir) < after_iteration:
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, "the run never reached its checkpoint"
        time.sleep(0.01)
    time.sleep(extra_delay)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def rows_without_timing(work_dir: Path) -> list[dict]:
    rows = RunFolder(work_dir).read_metrics()
    return [{k: v for k, v in row.items() if k not in ("ms", "tokens_per_s", "elapsed_s")} for row in rows]


def final_tensors(work_dir: Path) -> dict[str, torch.Tensor]:
    _, folder = RunFolder(work_dir).find_checkpoint()
    return {**load_file(str(folder / checkpoint.WEIGHTS_FILE)), **load_file(str(folder / checkpoint.STATE_FILE))}
