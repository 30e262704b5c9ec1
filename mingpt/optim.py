"""Optimizers and the learning-rate schedule, apart from the training loop.

The schedule is a function of the iteration (lr_at). Each parameter group may carry "lr_mult":
its learning rate is the schedule's times that multiplier (set_lr), so groups of different
optimizers (e.g. Muon for the matrices, AdamW for the rest, in an OptimizerSet) share one schedule.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from mingpt.utils import CfgNode


def lr_at(it: int, c: CfgNode) -> float:
    """Learning rate of iteration `it`: linear warmup over c.warmup_iters, then constant, or with
    c.lr_decay a cosine decay to c.min_lr_ratio x c.learning_rate at c.max_iters."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / c.warmup_iters
    if not c.lr_decay or c.max_iters is None:
        return c.learning_rate
    progress = min(1.0, (it - c.warmup_iters) / max(1, c.max_iters - c.warmup_iters))
    min_lr = c.learning_rate * c.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.learning_rate - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group the schedule's lr, times the group's "lr_mult" (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def build(model: nn.Module, c: CfgNode) -> torch.optim.Optimizer:
    """The model's own optimizer (configure_optimizers, as minGPT's GPT has), else AdamW."""
    if hasattr(model, "configure_optimizers"):
        return model.configure_optimizers(c)
    return torch.optim.AdamW(model.parameters(), lr=c.learning_rate, betas=tuple(c.betas),
                             weight_decay=c.weight_decay)


class OptimizerSet(torch.optim.Optimizer):
    """Several optimizers, each over its own parameter groups, stepped as one: what the loop, the
    gradient scaler and checkpoints see is one optimizer whose param_groups are all of theirs in
    order, and whose state_dict numbers their parameters one after the other."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        # (torch.optim.Optimizer.__init__ is not called: the members hold the state)
        self.defaults: dict[str, Any] = {}
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}

    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:  # type: ignore[override]
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    @torch.no_grad()
    def step(self, closure=None) -> None:  # type: ignore[override]
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:  # type: ignore[override]
        state, groups, offset = {}, [], 0
        for optimizer in self.optimizers:
            sd = optimizer.state_dict()
            state.update({offset + i: s for i, s in sd["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:  # type: ignore[override]
        groups, offset = list(state_dict["param_groups"]), 0
        for optimizer in self.optimizers:
            own = [groups.pop(0) for _ in optimizer.param_groups]
            ids = [i for g in own for i in g["params"]]
            optimizer.load_state_dict({
                "state": {i - offset: state_dict["state"][i] for i in ids if i in state_dict["state"]},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in own]})
            offset += len(ids)
