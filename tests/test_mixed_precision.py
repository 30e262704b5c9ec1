"""Mixed precision (trainer.dtype): autocast computes in bf16 or fp16 while the weights, the
optimizer state and the checkpoints stay fp32. The CPU paths run everywhere; the CUDA ones (bf16 by
default, fp16 with its gradient scaler, TF32) only where a GPU is present, and say so otherwise."""
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_close_to, pattern_stream, quick_config, tiny_gpt
from mingpt.trainer import Trainer
from mingpt.training import checkpoint
from mingpt.training.run_folder import RunFolder
from mingpt.training.runtime import resolve_dtype

NO_CUDA = "needs a CUDA GPU (this machine has none): the CUDA mixed-precision path is untested here"


def train(tmp_path, max_iters=30, resume=False, **overrides) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(quick_config(max_iters=max_iters, **overrides), tiny_gpt(vocab_size=7), pattern_stream(),
                      pattern_stream(800), work_dir=tmp_path, resume=resume)
    trainer.run()
    return trainer


def assert_fp32_weights_state_and_checkpoint(trainer: Trainer, work_dir) -> None:
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(t.dtype == torch.float32 for s in trainer.optimizer.state.values() for t in s.values())
    _, folder = RunFolder(work_dir).find_checkpoint()
    assert all(t.dtype == torch.float32 for t in load_file(str(folder / checkpoint.WEIGHTS_FILE)).values())


def test_auto_is_fp32_on_the_cpu():
    assert resolve_dtype("auto", torch.device("cpu")) is None


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                                      (False, False, None)])
def test_fast_is_bf16_on_a_cpu_that_multiplies_bf16_natively_and_fp32_on_others(monkeypatch, avx512_bf16, amx,
                                                                                 expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert resolve_dtype("fast", torch.device("cpu")) == expected
    assert resolve_dtype("auto", torch.device("cpu")) is None  # the same result on every CPU


def test_bf16_autocast_on_the_cpu_trains_close_to_fp32_with_fp32_weights(tmp_path):
    """Explicit bf16 works on the CPU too (slow without AMX: for tests and CPUs that have it)."""
    bf16 = train(tmp_path / "bf16", dtype="bf16")
    fp32 = train(tmp_path / "fp32", dtype="fp32")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["resolved"]["dtype"] == "bf16"
    assert_fp32_weights_state_and_checkpoint(bf16, tmp_path / "bf16")
    losses = {name: [row["loss"] for row in t.metrics] for name, t in (("bf16", bf16), ("fp32", fp32))}
    assert losses["bf16"] != losses["fp32"]  # it did compute in bf16
    assert_close_to(losses["fp32"], losses["bf16"], 4, dtype=torch.bfloat16)  # a few bf16 ulps of the loss
    assert losses["bf16"][-1] < 0.7 * losses["bf16"][0]


def test_fp16_scales_the_loss_and_a_resumed_run_keeps_the_scale(tmp_path):
    """fp16 (CPU autocast here) goes through the gradient scaler, whose state is checkpointed."""
    trainer = train(tmp_path, max_iters=20, dtype="fp16")
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 1
    assert trainer.metrics[-1]["loss"] < 0.8 * trainer.metrics[0]["loss"]
    assert_fp32_weights_state_and_checkpoint(trainer, tmp_path)
    saved = RunFolder(tmp_path).find_checkpoint()[0]["grad_scaler"]
    assert saved == trainer.scaler.state_dict() and saved["_growth_tracker"] > 1  # steps since an overflow
    resumed = train(tmp_path, max_iters=21, resume=True, dtype="fp16")
    assert resumed.scaler.state_dict()["_growth_tracker"] == saved["_growth_tracker"] + 1  # not 1: restored


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_auto_on_cuda_is_bf16_where_the_card_has_it_else_fp16_with_tf32_on(tmp_path):
    trainer = train(tmp_path, device="cuda", compile=False)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert trainer.amp_dtype == expected
    assert trainer.scaler.is_enabled() == (expected == torch.float16)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert_fp32_weights_state_and_checkpoint(trainer, tmp_path)
    assert trainer.metrics[-1]["loss"] < 0.7 * trainer.metrics[0]["loss"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_fp16_on_cuda_trains_with_the_gradient_scaler(tmp_path):
    trainer = train(tmp_path, device="cuda", compile=False, dtype="fp16")
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 1
    assert_fp32_weights_state_and_checkpoint(trainer, tmp_path)
    assert trainer.metrics[-1]["loss"] < 0.7 * trainer.metrics[0]["loss"]
