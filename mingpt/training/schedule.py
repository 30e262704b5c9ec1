"""The learning-rate schedule and Muon's momentum warmup: functions of the iteration (and, for a
run with a time budget, of the share of it used), set on the optimizer every iteration.

    lr_at(it, c)              warmup, then "constant", "cosine" or "wsd" (c.lr_schedule)
    momentum_at(it, c)        Muon's momentum warming up
    apply_schedule(opt, it, c)  both, on every parameter group (times its "lr_mult")
Each parameter group may carry "lr_mult": its learning rate is the schedule's times that
multiplier, so the groups of several optimizers (Muon's and AdamW's) share one schedule.
"""
from __future__ import annotations

import math

import torch

from mingpt.training.muon import Muon
from mingpt.utils import CfgNode

SCHEDULES = ("constant", "cosine", "wsd")
COOLDOWN_SHAPES = ("linear", "1-sqrt")


def schedule_of(c: CfgNode) -> str:
    """c.lr_schedule, or what code written before it says with lr_decay (a key the Trainer's
    config no longer has; a script may still set it): True is a decay (c.lr_schedule's, cosine
    for 'constant'), False a constant rate."""
    decay = getattr(c, "lr_decay", None)
    if decay is None:
        return c.lr_schedule
    return ("cosine" if c.lr_schedule == "constant" else c.lr_schedule) if decay else "constant"


def lr_at(it: int, c: CfgNode, time_fraction: float | None = None) -> float:
    """Learning rate of iteration `it`: linear warmup over c.warmup_iters, then by c.lr_schedule
        "constant" c.learning_rate (minGPT's)
        "cosine"   half a cosine from the end of the warmup down to the floor c.min_lr_ratio x
                   c.learning_rate, reached at c.max_iters
        "wsd"      warmup-stable-decay: constant until the last c.cooldown_fraction of max_iters,
                   then a cooldown to the floor, "linear" or "1-sqrt" (c.cooldown_shape). Until
                   the cooldown the rate does not depend on max_iters, so a run can be extended;
                   "1-sqrt" falls fast at first, then slowly (Hagele et al. 2024 found it ends lower)
    Example, wsd with max_iters=100, cooldown_fraction=0.2: the full rate up to iteration 80; at
    90 the rate has come halfway down to the floor (linear), or 1 - sqrt(0.5) = 71% (1-sqrt).

    time_fraction (the share of a time budget, c.max_seconds, already used) moves a WSD cooldown
    too: it runs over the last cooldown_fraction of the iterations or of the time, whichever is
    further along, so a run stopped by its budget has cooled down by then on any machine (and
    max_iters may be None). The iterations' schedule is then no longer a function of `it` alone."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / c.warmup_iters
    schedule = schedule_of(c)
    timed = schedule == "wsd" and time_fraction is not None
    if schedule == "constant" or (c.max_iters is None and not timed):
        return c.learning_rate
    min_lr = c.learning_rate * c.min_lr_ratio
    if schedule == "wsd":
        progress = 0.0
        if c.max_iters is not None:
            start = max(c.warmup_iters, c.max_iters - round(c.cooldown_fraction * c.max_iters))
            progress = min(1.0, max(0, it - start) / max(1, c.max_iters - start))
        if timed:
            into = time_fraction - (1 - c.cooldown_fraction)  # (of the budget, since the cooldown began)
            progress = max(progress, min(1.0, max(0.0, into) / max(c.cooldown_fraction, 1e-9)))
        left = 1.0 - (progress if c.cooldown_shape == "linear" else math.sqrt(progress))
        return min_lr + left * (c.learning_rate - min_lr)
    progress = min(1.0, (it - c.warmup_iters) / max(1, c.max_iters - c.warmup_iters))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.learning_rate - min_lr)


def momentum_at(it: int, c: CfgNode) -> float:
    """Muon's momentum at iteration `it`: from c.muon_momentum_start linearly up to c.muon_momentum
    over the first c.muon_momentum_warmup_iters (as modded-nanogpt does: early gradients change
    fast, and a long memory of them would mislead), then constant."""
    if it >= c.muon_momentum_warmup_iters:
        return c.muon_momentum
    frac = it / c.muon_momentum_warmup_iters
    return c.muon_momentum_start + frac * (c.muon_momentum - c.muon_momentum_start)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group the schedule's lr, times the group's "lr_mult" (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def apply_schedule(optimizer: torch.optim.Optimizer, it: int, c: CfgNode, lr: float | None = None) -> float:
    """Set iteration `it`'s schedule on optimizer: every group's lr (lr_at, or `lr` if given,
    times the group's lr_mult) and the momentum of every Muon in it (momentum_at). Returns lr."""
    lr = lr_at(it, c) if lr is None else lr
    set_lr(optimizer, lr)
    for member in getattr(optimizer, "optimizers", [optimizer]):
        if isinstance(member, Muon):
            for group in member.param_groups:
                group["momentum"] = momentum_at(it, c)
    return lr
