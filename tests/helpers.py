"""Helpers the tests share: tiny models and data, quick trainer settings, and reading runs."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from mingpt import checkpoint
from mingpt.data import TokenStream
from mingpt.model import GPT
from mingpt.run_folder import RunFolder
from mingpt.trainer import Trainer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
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


def quick_config(**overrides):
    """Trainer settings for a few quick CPU iterations (cosine decay, as mingpt's jobs use)."""
    c = Trainer.get_default_config()
    c.device, c.batch_size, c.max_iters, c.progress_bar, c.log_interval = "cpu", 8, 30, False, 5
    c.learning_rate, c.eval_interval, c.eval_iters, c.lr_decay = 3e-3, 10, 4, True
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
    c.device, c.max_iters, c.batch_size, c.lr_decay = "cpu", STEPS, BATCH, False
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
