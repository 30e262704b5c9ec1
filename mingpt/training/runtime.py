"""Per-process set-up, in one place and done explicitly: join the job, choose the device and the
precision, tune malloc, seed.

A job calls setup() first thing; the Trainer calls it too when it runs (every step of it is
idempotent, so a library user's `Trainer(...).run()` works without it). Nothing else in mingpt
changes process-wide state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mingpt import distributed
from mingpt.distributed import Place
from mingpt.nn import kernels
from mingpt.utils import cpu_multiplies_bf16, set_seed

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # trainer.dtype -> autocast
CHOICES = ("auto", "fast")  # trainer.dtype settings that depend on the device (resolve_dtype)


@dataclass(frozen=True)
class Runtime:
    """What set-up chose for this process."""
    place: Place
    device: torch.device
    amp_dtype: torch.dtype | None  # None: plain fp32


def choose(device: str = "auto", dtype: str = "auto", place: Place | None = None) -> Runtime:
    """What setup() will choose, worked out without changing anything."""
    place = place if place is not None else distributed.place()
    local = distributed.local_device(resolve_device(device), place)
    return Runtime(place, local, resolve_dtype(dtype, local))


def setup(device: str = "auto", dtype: str = "auto", seed: int | None = None) -> Runtime:
    """Set this process up to train: join the torchrun job if there is one, pick its device (under
    torchrun, cuda:LOCAL_RANK), keep freed memory on the CPU (kernels.keep_freed_memory), allow
    TF32 matmuls on CUDA unless fp32 is asked for, and, given a seed, seed python, numpy and
    torch with it; rank r > 0 reseeds torch with seed + r, so that each rank draws its own dropout."""
    result = choose(device, dtype, distributed.init())
    if result.device.type == "cpu":
        kernels.keep_freed_memory()
    if result.device.type == "cuda" and dtype != "fp32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if seed is not None:
        set_seed(seed)
        if result.place.rank > 0:
            torch.manual_seed(seed + result.place.rank)
    return result


def resolve_device(device: str) -> torch.device:
    """'auto' -> the best device present (cuda, then mps, then cpu); anything else as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that trainer.dtype means on device; None is plain fp32. 'auto' is bf16
    on a CUDA card that has it, fp16 on older cards, and fp32 elsewhere: the same result on every
    CPU. 'fast' is 'auto', and bf16 on a CPU that multiplies bf16 natively (AVX-512 BF16, AMX),
    where its products are several times faster; on other CPUs bf16 is emulated and slower."""
    if name not in CHOICES:
        return DTYPES[name]
    if device.type == "cpu" and name == "fast" and cpu_multiplies_bf16():
        return torch.bfloat16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def dtype_name(dtype: torch.dtype | None) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)
