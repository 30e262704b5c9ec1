"""A row of metrics.jsonl: what the iterations since the last row add up to (their mean loss, over
the ranks too, and their speed), and the check that training has not diverged."""
from __future__ import annotations

import time
from typing import Any

import torch

from mingpt import distributed


class LogWindow:
    """The iterations since the last metrics row: their losses (on the device, not read until the
    row is written: no host sync per step) and their training time."""

    def __init__(self, start_iter: int = 0) -> None:
        self.start_iter = start_iter
        self.start_time = time.time()
        self.paused = 0.0  # seconds spent evaluating or in callbacks
        self.losses: list[torch.Tensor] = []  # one per iteration

    def close(self, done: int, lr: float, tokens_per_iter: int, extra: dict) -> dict[str, Any]:
        """The metrics row for iteration `done`; the loss is the mean over the window. A NaN or
        inf loss stops training here, before any checkpoint of the diverged model is saved."""
        iters = done - self.start_iter
        ms = 1000 * max(time.time() - self.start_time - self.paused, 1e-9) / iters
        # the mean over the ranks too: every rank logs, and checks, the same numbers
        losses = distributed.mean(torch.stack(self.losses).float()).cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            first = int(bad[0])
            raise FloatingPointError(f"training diverged at iteration {self.start_iter + first + 1}: "
                                     f"the loss is {losses[first].item()}; the last good checkpoint is "
                                     f"kept. Lower --trainer.learning_rate or raise --trainer.warmup_iters")
        loss = losses.mean().item()
        return {"iter": done, "loss": loss, "lr": lr, "ms": ms,
                "tokens_per_s": tokens_per_iter * 1000 / ms, **extra}
