"""How the processes of a job train one model together, behind one small interface.

The Trainer's loop does the same thing whatever the strategy: it wraps the model once, runs each
micro-batch inside no_sync (so gradients are exchanged only where the strategy says), calls
after_step after every optimizer step, and asks the strategy for the whole state to checkpoint.
    Single  one process: the model as it is
    DDP     every rank holds the whole model; backward averages the gradients (distributed.replicate)
    FSDP    weights, gradients and optimizer state sharded over the ranks (distributed.shard)
    DiLoCo  workers apart for H steps, then an outer step together (diloco/, on torchft)
A strategy may also take part in the start (start), choose each iteration's batches
(before_draw), count what it sends (counters: comm_bytes, syncs) and keep state in checkpoints
(checkpoint_state): Single's do nothing, so the plain path pays for none of them.
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Callable, ContextManager

import torch
import torch.nn as nn

from mingpt import distributed
from mingpt.distributed import Place
from mingpt.utils import CfgNode


class Single:
    """One process trains alone."""

    name = "single"
    shares_evaluation = False  # (every rank evaluates its share of the batches, the sums added)

    def wrap(self, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None,
             compile: bool) -> nn.Module:
        """Put model on device and return what the training step calls (compiled if asked). The
        plain model stays what evaluation, checkpoints and the optimizer see."""
        model.to(device)
        return torch.compile(model) if compile else model

    def no_sync(self, step_model: nn.Module, last_micro_batch: bool) -> ContextManager:
        """The context of one micro-batch's forward and backward."""
        return nullcontext()

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after every optimizer step."""

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
        """Whole weights and optimizer state to checkpoint, where the model's own are not whole
        (None: save the model's and optimizer's own)."""
        return None, None

    def optimizer_state_loader(self, model: nn.Module, optimizer: torch.optim.Optimizer
                               ) -> Callable[[dict], None] | None:
        """How to hand a checkpoint's whole optimizer state to the optimizer (None: its own
        load_state_dict)."""
        return None

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
              live_state: Callable[[], dict], load_live_state: Callable[[dict], None]) -> None:
        """Called once the optimizer is built, before a resumed run's state is loaded. live_state /
        load_live_state read and set the trainer's whole state (for healing a peer)."""

    def before_draw(self, generator: torch.Generator, iteration: int) -> None:
        """Called before each iteration's batch is drawn from generator."""

    def counters(self, iterations: int) -> dict[str, int]:
        """Figures for metrics rows and summary.json after `iterations` iterations (comm_bytes)."""
        return {}

    def checkpoint_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """The strategy's own state to checkpoint: (JSON-able, tensors)."""
        return {}, {}

    def load_checkpoint_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Take back what checkpoint_state saved."""

    def close(self) -> None:
        """Called when run() ends, however it ends."""


class DDP(Single):
    """Distributed data parallel: each rank trains the whole model on its rows of every batch,
    and backward averages the gradients over the ranks."""

    name = "ddp"
    shares_evaluation = True

    def wrap(self, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None,
             compile: bool) -> nn.Module:
        # what one all-reduce of all the gradients sends from this rank (fp32, as DDP reduces them)
        grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        self.bytes_per_step = distributed.ring_allreduce_bytes(grad_bytes, distributed.place().world_size)
        # DDP around the compiled model, as nanoGPT does: DDP's no_sync then works as in eager mode
        return distributed.replicate(Single.wrap(self, model, device, amp_dtype, compile), device)

    def no_sync(self, step_model: nn.Module, last_micro_batch: bool) -> ContextManager:
        # gradients are averaged once per step, in the last micro-batch's backward
        return distributed.no_sync(step_model, skip=not last_micro_batch)

    def counters(self, iterations: int) -> dict[str, int]:
        """Bytes this rank sent in the gradient all-reduces (one per optimizer step, counted as a
        ring all-reduce sends: 2(n-1)/n x the gradients' bytes), and the syncs (every step)."""
        return {"comm_bytes": iterations * self.bytes_per_step, "syncs": iterations}


class FSDP(Single):
    """Fully sharded data parallel (FSDP2): each rank keeps a shard of every weight, gradient and
    optimizer state; each block is gathered whole only while it runs. Gradients are reduce-scattered
    after every micro-batch, which keeps them sharded. Checkpoints are gathered whole on rank 0."""

    name = "fsdp"

    def wrap(self, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None,
             compile: bool) -> nn.Module:
        model = distributed.shard(model, device, amp_dtype)  # in place, unit by unit onto the device
        return torch.compile(model) if compile else model

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
        return distributed.full_state(model, optimizer)

    def optimizer_state_loader(self, model: nn.Module, optimizer: torch.optim.Optimizer
                               ) -> Callable[[dict], None] | None:
        return partial(distributed.load_full_optimizer_state, model, optimizer)


def choose(fsdp: bool, place: Place, diloco: CfgNode | None = None, run_config: dict | None = None) -> Single:
    """The strategy of a job of place.world_size processes (trainer.fsdp picks FSDP over DDP);
    with diloco.sync_every set, that strategy inside a DiLoCo worker."""
    inner = Single() if place.world_size == 1 else FSDP() if fsdp else DDP()
    if diloco is None or not diloco.sync_every:
        return inner
    from mingpt.distributed.diloco.strategy import DiLoCo  # (only when asked: it needs torchft)
    return DiLoCo(inner, diloco, run_config or {}, place)
