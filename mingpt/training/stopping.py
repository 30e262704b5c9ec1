"""When a run stops, decided in one place: the loop asks Stopping once per iteration, after the
iteration's evaluation and callbacks, and every rank gets the same answer.

A run stops after the iteration at which the first of these holds, named in summary.json's
stop_reason in this order of precedence:
    interrupted      SIGINT / SIGTERM (a checkpoint is saved; the run can be resumed)
    target_val_loss  an evaluation's val loss at or below trainer.target_val_loss
    max_seconds      the run's clock has reached trainer.max_seconds (that iteration is then
                     evaluated and saved, as at max_iters)
    stop()           a callback asked (the adder does, once its test set is solved)
    max_iters        trainer.max_iters iterations done
The run's clock counts seconds since training began (evaluations and checkpoints included) and
goes on from a resumed run's checkpoint: the time between a kill and the resume is not counted,
nor that of iterations after the checkpoint, which are trained again.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from mingpt import distributed
from mingpt.utils import CfgNode

log = logging.getLogger(__name__)
REASONS = ("interrupted", "target_val_loss", "max_seconds", "stop()", "max_iters")


class Stopping:
    """The stopping rules of one run (trainer.max_iters, target_val_loss, max_seconds), a signal,
    and a callback's request, agreed by every rank."""

    def __init__(self, config: CfgNode, is_main: bool = True) -> None:
        self.config, self.is_main = config, is_main  # (read when asked: a caller may change it until run())
        self.reason: str | None = None  # why the run stopped (None while it runs)
        self.signal: int | None = None  # the signal that interrupted it
        self.requested = False  # a callback's stop()
        self.reached = False  # the target val loss, at this iteration's evaluation
        self.seconds_before = 0.0  # a resumed run's clock at its checkpoint
        self.origin = 0.0  # the time.time() at which the clock read 0
        self.time_fraction: float | None = None  # with max_seconds: the share of it used (all ranks' most)

    def clock(self) -> float:
        """Seconds on the run's clock."""
        return time.time() - self.origin

    def start(self, now: float, iteration: int, summary: dict[str, Any]) -> bool:
        """Start the clock (training begins now, at `iteration`) and return whether the run is over
        already: at max_iters, or a resumed run that had reached its target (the same one) or spent
        its budget; like one past its max_iters, it trains no further."""
        c = self.config
        self.origin = now - self.seconds_before
        if c.max_seconds is not None:
            self.time_fraction = self.seconds_before / c.max_seconds
        if c.target_val_loss is not None and summary.get("target_val_loss") != c.target_val_loss:
            summary.update(target_val_loss=c.target_val_loss, target_reached=False, target_iter=None, target_s=None)
        over = {"target_val_loss": c.target_val_loss is not None and summary["target_reached"],
                "max_seconds": c.max_seconds is not None and self.seconds_before >= c.max_seconds,
                "max_iters": c.max_iters is not None and iteration >= c.max_iters}
        self.reason = next((reason for reason, met in over.items() if met), None)
        return self.reason is not None

    def evaluated(self, val_loss: float, iteration: int, summary: dict[str, Any]) -> None:
        """Note an evaluation's val loss: the first time it reaches the target, the summary records
        when (the iteration, and the clock after the evaluation)."""
        target = self.config.target_val_loss
        if target is None or val_loss > target:
            return
        self.reached = True
        if self.reason == "max_seconds":  # the evaluation that ends a run by its budget reached it too
            self.reason = "target_val_loss"
        if not summary["target_reached"]:
            summary.update(target_reached=True, target_iter=iteration, target_s=self.clock())
            if self.is_main:
                log.info(f"val loss {val_loss:.4f} reached the target {target} at iteration {iteration}, "
                         f"{summary['target_s']:.1f} s into the run: saving and stopping")

    def should_stop(self, iteration: int, row_pending: bool = False) -> tuple[bool, bool]:
        """After `iteration`: (stop now, a metrics row is pending somewhere), the same on every rank.
        A signal or a callback's stop() may come to some ranks only, and the clocks of the ranks
        differ a little, yet all must stop, evaluate and write their rows at the same iteration,
        and follow the same schedule (the share of the time budget used is the slowest rank's):
        one small collective agrees on all of it. (The signal is never cleared: one that lands
        after this read stops the next iteration.)"""
        c = self.config
        used = self.clock() / c.max_seconds if c.max_seconds is not None else 0.0
        signum = self.signal or 0
        agreed = distributed.max_over_ranks(self.requested or signum > 0, row_pending, signum, self.reached,
                                            used >= 1, int(1e6 * used))
        requested, pending, signum, reached, out_of_time, parts_per_million = agreed
        if signum:
            self.signal = signum
        if c.max_seconds is not None:
            self.time_fraction = parts_per_million / 1e6
            if out_of_time and self.is_main:
                log.info(f"the run has taken its max_seconds={c.max_seconds}: evaluating, saving and stopping")
        met = {"interrupted": signum, "target_val_loss": reached, "max_seconds": out_of_time, "stop()": requested,
               "max_iters": c.max_iters is not None and iteration >= c.max_iters}
        self.reason = next((reason for reason, is_met in met.items() if is_met), None)
        self.reached = False
        return self.reason is not None, bool(pending)

    @contextmanager
    def on_signals(self) -> Iterator[None]:
        """While training, SIGINT and SIGTERM stop the run after the current iteration (in the main
        thread; elsewhere signals are left as they are)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            self.signal = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
