"""Muon (Keller Jordan et al. 2024): momentum orthogonalised by a Newton-Schulz iteration, for the
hidden weight matrices of a network (embeddings, heads, gains and biases take AdamW).

Ours, not torch.optim.Muon (torch 2.13): that one always iterates in bf16 and one matrix at a
time; ours iterates in fp32 by default (the same result on every CPU), or in bf16 where that is
fast (ns_dtype), orthogonalises the matrices of one shape as one batched product, and gathers a
sharded (FSDP2) matrix whole before orthogonalising it. In bf16 it steps as torch.optim.Muon does
(tests/test_muon.py compares the two).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from mingpt.utils import cpu_multiplies_bf16

NS_DTYPES = {"auto": None, "fast": None, "fp32": torch.float32, "bf16": torch.bfloat16}


def ns_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype that Muon's ns_dtype setting `name` means on `device` (see Muon)."""
    if NS_DTYPES[name] is not None:
        return NS_DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if name == "fast" and device.type == "cpu" and cpu_multiplies_bf16() else torch.float32


# The quintic Newton-Schulz iteration of Keller Jordan's Muon: X <- aX + b(XX^T)X + c(XX^T)^2 X maps
# each singular value s to a s + b s^3 + c s^5. These coefficients are not the ones that converge
# to 1 (those are slow near 0); they lift small values as steeply as possible (slope a at 0) and
# leave every singular value in a band around 1 (about 0.7 to 1.2) after 5 steps: near enough.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """About U V^T for g = U S V^T: g with every singular value moved near 1, by `steps` quintic
    Newton-Schulz iterations computed in `dtype` (bf16 is fast on GPUs, and on CPUs with bf16
    instructions; elsewhere it is emulated and slow). Returns g's shape and dtype."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide form: X X^T is then the smaller square
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # Frobenius norm >= the largest singular value
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


def _is_dtensor(t: torch.Tensor) -> bool:
    """Whether t is a sharded (FSDP2) tensor."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D weight matrices (hidden layers only:
    embeddings, heads, gains and biases take AdamW). Each step:
        buf    <- momentum x buf + (1 - momentum) x grad       (an average of the gradients)
        update <- (1 - momentum) x grad + momentum x buf        (Nesterov; buf without it)
        p      <- p x (1 - lr x weight_decay) - lr x sqrt(max(1, rows / cols)) x orthogonalize(update)
    Orthogonalising gives every direction of the update the same size, so rare directions are not
    drowned by the dominant ones; sqrt(max(1, rows / cols)) keeps tall matrices' updates as large
    per entry as square ones'. (The buffer is an average, not a sum, so that changing momentum
    while it warms up does not change its scale; orthogonalize normalises either way.)

    ns_dtype: the Newton-Schulz iteration's dtype, "fp32", "bf16", "auto" (bf16 on CUDA, fp32
    elsewhere: the same result on every CPU) or "fast" (bf16 also on a CPU that multiplies bf16
    natively, with AVX-512 BF16 or AMX, where it is faster; fp32 on the others, where bf16 is slow).
    (torch.optim.Muon always iterates in bf16.) The trainer sets lr and momentum every iteration
    (apply_schedule).

    Sharded parameters (FSDP2's DTensors) are orthogonalised whole: each rank gathers the full
    update (full_tensor(), an all-gather), orthogonalises it (every rank the same matrix: the work
    is repeated, not split) and keeps its own shard. The momentum buffer stays sharded.
    """

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_dtype: str = "auto") -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum={momentum} must be in [0, 1)")
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"Muon ns_dtype={ns_dtype!r} must be one of {', '.join(map(repr, NS_DTYPES))}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, ns_dtype=ns_dtype)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got a parameter of shape "
                                     f"{tuple(p.shape)}: give it to AdamW")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            grads = [p.grad for p in params]
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
            dtype = ns_dtype(group["ns_dtype"], params[0].device)
            for p, update in zip(params, self._orthogonalized_all(updates, group["ns_steps"], dtype)):
                if decay:
                    p.mul_(1 - lr * decay)
                rows, cols = p.shape
                p.add_(update, alpha=-lr * math.sqrt(max(1.0, rows / cols)))
        return loss

    @classmethod
    def _orthogonalized_all(cls, updates: list[torch.Tensor], steps: int, dtype: torch.dtype) -> list[torch.Tensor]:
        """Every update orthogonalised; those of one shape together, as one batched iteration (a
        GPT's blocks have four shapes: a few large products instead of many small ones)."""
        out: list[torch.Tensor | None] = [None] * len(updates)
        by_shape: dict[tuple, list[int]] = {}
        for i, update in enumerate(updates):
            if _is_dtensor(update):
                out[i] = cls._orthogonalized(update, steps, dtype)
            else:
                by_shape.setdefault((tuple(update.shape), update.device), []).append(i)
        for indices in by_shape.values():
            stacked = orthogonalize(torch.stack([updates[i] for i in indices]), steps, dtype)
            for i, result in zip(indices, stacked.unbind(0)):
                out[i] = result
        return out

    @staticmethod
    def _orthogonalized(update: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
        """orthogonalize(update); a sharded update is gathered whole first and then cut back into
        this rank's shard (src_data_rank=None: every rank has the whole result, none is sent)."""
        if not _is_dtensor(update):
            return orthogonalize(update, steps, dtype)
        from torch.distributed.tensor import distribute_tensor

        whole = orthogonalize(update.full_tensor(), steps, dtype)
        return distribute_tensor(whole, update.device_mesh, update.placements, src_data_rank=None)
