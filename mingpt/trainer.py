"""Trainer: a training loop that knows nothing about GPT.

It trains any nn.Module whose forward(x, y) returns (logits, loss) on batches from a dataset:
either a token stream with get_batch(batch_size, generator) -> (x, y), which hands over whole
(B, T) batches, or any map-style Dataset of (x, y) pairs (minGPT's interface). Given a work_dir it
writes the run folder. The loop is here; its parts have rooms of their own in training/ (settings,
stopping, optimizer and schedule, batches, metrics rows, checkpoints, run folder, set-up), how
processes train together in distributed/parallel.py, validation in eval/loss.py.
"""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mingpt import distributed
from mingpt.distributed import parallel
from mingpt.eval import loss as eval_loss
from mingpt.nn import kernels
from mingpt.training import checkpoint, optim, runtime, schedule
from mingpt.training.batches import draw_batches
from mingpt.training.config import check_inputs, resolve_accumulation, resolved_run_config, trainer_config
from mingpt.training.metrics import LogWindow
from mingpt.training.run_folder import RunFolder
from mingpt.training.stopping import Stopping
from mingpt.utils import CfgNode

log = logging.getLogger(__name__)
# a task scored during training: fn(model, device, autocast) -> {"acc": 0.31, ...}
EvalTask = Callable[[nn.Module, torch.device, Callable[[], AbstractContextManager]], dict[str, float]]


class Trainer:

    @staticmethod
    def get_default_config() -> CfgNode:
        """Every setting with its default, what it may hold and what it means: training/config.py."""
        return trainer_config()

    def __init__(self, config: CfgNode, model: nn.Module, train_dataset: Dataset,
                 val_dataset: Dataset | None = None, work_dir: str | Path | RunFolder | None = None,
                 run_config: dict | None = None, resume: bool = False, overwrite: bool = False,
                 checkpoint: str | None = None, eval_task: EvalTask | None = None,
                 diloco: CfgNode | None = None) -> None:
        """work_dir: the run folder (None writes nothing). A folder that already holds a run is
        refused unless resume=True (continue from its newest intact checkpoint, or the one
        `checkpoint` names, exactly) or overwrite=True (start over). eval_task: the task that
        config.eval_task names (eval.choice.MultipleChoiceTask, or any such callable).

        diloco: a DiLoCo section (distributed/diloco/); with its sync_every set, this run is one
        worker of a DiLoCo group (torchft), and writes the run folder it is given. Nothing
        happens until run(): then the process is set up (runtime.setup: under torchrun it joins
        the job, see mingpt/distributed/) and the run folder prepared.
        """
        check_inputs(config, val_dataset, eval_task)
        self.config, self.model, self.eval_task = config, model, eval_task
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        chosen = runtime.choose(config.device, config.dtype)  # (worked out; nothing is changed)
        self.place, self.device, self.amp_dtype = chosen.place, chosen.device, chosen.amp_dtype
        self.grad_accum_steps = resolve_accumulation(config, self.place.world_size)
        self.run_folder = work_dir if isinstance(work_dir, RunFolder) or work_dir is None else RunFolder(work_dir)
        self.resume, self.overwrite, self.checkpoint = resume, overwrite, checkpoint
        self.run_config = resolved_run_config(run_config, config, self.place.world_size, self.grad_accum_steps,
                                              self.amp_dtype, diloco)  # (config.json)
        self.strategy = parallel.choose(config.fsdp, self.place, diloco, self.run_config)
        self.stopping = Stopping(config, self.place.is_main)
        self.callbacks: dict[str, list[Callable[[Trainer], None]]] = defaultdict(list)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.generator: torch.Generator | None = None  # draws the training batches (in run)
        # state visible to callbacks (minGPT's names)
        self.iter_num, self.iter_time, self.iter_dt = 0, 0.0, 0.0  # iterations done before the current one
        self.loss: torch.Tensor | None = None
        self.val_loss: float | None = None
        self.best_val = math.inf
        self.train_seconds = 0.0
        self.metrics: list[dict] = []  # every row written to metrics.jsonl
        self.summary: dict[str, Any] = {}  # projects may add their final figures here
        self._pending: dict[str, Any] = {}

    @property
    def work_dir(self) -> Path | None:
        """The run folder's path (None: the run writes nothing)."""
        return self.run_folder.path if self.run_folder is not None else None

    @property
    def is_main(self) -> bool:
        """True in the process that writes the run folder (rank 0): print and save only there."""
        return self.place.is_main

    @property
    def stop_reason(self) -> str | None:
        """Why run() ended (summary.json's stop_reason; stopping.py), None while it runs."""
        return self.stopping.reason

    # -- callbacks -------------------------------------------------------------------------------
    def add_callback(self, onevent: str, callback: Callable[["Trainer"], None]) -> None:
        self.callbacks[onevent].append(callback)

    def set_callback(self, onevent: str, callback: Callable[["Trainer"], None]) -> None:
        self.callbacks[onevent] = [callback]

    def trigger_callbacks(self, onevent: str) -> None:
        for callback in self.callbacks.get(onevent, []):
            callback(self)

    def log(self, **values: Any) -> None:
        """Add values (e.g. test_accuracy=0.97) to this iteration's row of metrics.jsonl."""
        self._pending.update(values)

    def stop(self) -> None:
        """End training after the current iteration (e.g. once a test set is solved)."""
        self.stopping.requested = True

    def lr_at(self, it: int) -> float:
        """Learning rate of iteration `it` (schedule.lr_at; with max_seconds, a WSD cooldown also
        follows the share of the time budget used so far)."""
        return schedule.lr_at(it, self.config, self.stopping.time_fraction)

    def autocast(self) -> AbstractContextManager:
        """Mixed precision around a forward pass (a no-op context for fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def batches(self, dataset: Dataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless training data from dataset, one optimizer step at a time (batches.py)."""
        return draw_batches(dataset, self.generator, self.place, self.config.batch_size * self.grad_accum_steps,
                            self.device, self.config.num_workers)

    def evaluate(self, dataset: Dataset) -> float:
        """Mean loss over fixed batches of dataset (the same ones every call)."""
        return eval_loss.val_loss(self.model, dataset, self.config.batch_size, self.config.eval_iters,
                                  self.device, self.autocast, self.place, self.strategy.shares_evaluation)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until max_iters, target_val_loss, max_seconds or stop(); returns the summary (also
        written to summary.json, with the stop_reason). The model comes back with its own classes
        (the CPU kernels the run used are taken off again).

        SIGINT / SIGTERM end the run after the current iteration, with a checkpoint saved (and
        summary.json, stop_reason "interrupted").
        """
        with kernels.training(self.model, self.device):  # (the CPU's fast kernels, for the run only)
            c = self._start()
            batches = self.batches(self.train_dataset)
            window, tokens_per_iter = LogWindow(self.iter_num), 0
            run_start = self.iter_time = time.time()
            stop = self.stopping.start(run_start, self.iter_num, self.summary)  # (a resumed run may be done)
            progress = tqdm(total=c.max_iters, initial=self.iter_num, disable=not (c.progress_bar and self.is_main),
                            mininterval=1.0, dynamic_ncols=True, desc="training")
            try:
                with self.stopping.on_signals():
                    while not stop:
                        lr = self.lr_at(self.iter_num)
                        schedule.apply_schedule(self.optimizer, self.iter_num, c, lr)  # lr, Muon's momentum
                        self.strategy.before_draw(self.generator, self.iter_num)  # (DiLoCo: each worker its own)
                        self.loss, tokens_per_iter = self._step(next(batches))  # no host sync per step
                        window.paused += self._compile_seconds()
                        window.losses.append(self.loss)
                        now = time.time()
                        self.iter_dt, self.iter_time = now - self.iter_time, now
                        done = self.iter_num + 1

                        paused_at = time.time()  # evaluation and callbacks are not training time
                        due = done % c.eval_interval == 0 or done == c.max_iters  # evaluate and save
                        improved = due and self._validate(done)
                        self._score_task(done)
                        self.trigger_callbacks("on_batch_end")
                        stop, pending = self.stopping.should_stop(done, row_pending=bool(self._pending))
                        if stop and self.stopping.reason == "max_seconds" and not due:  # ends as at max_iters
                            due, improved = True, self._validate(done)
                        window.paused += time.time() - paused_at
                        self.iter_num = done
                        progress.update(1)
                        if done % c.log_interval == 0 or pending or due or stop:
                            window = self._write_row(window, done, lr, tokens_per_iter, run_start, progress)
                        if due or stop:  # after the row, so a resumed run has every row up to here
                            self._save_checkpoint(best=improved)
            finally:
                progress.close()
                self.strategy.close()
                if self.run_folder is not None:
                    self.run_folder.close_metrics()
        if self.stopping.signal is not None:
            self._finish(run_start, tokens_per_iter, callbacks=False)  # (stop_reason "interrupted")
            raise KeyboardInterrupt(f"stopped by signal {self.stopping.signal} after iteration {self.iter_num}"
                                    + ("; checkpoint saved, continue with --system.resume=true"
                                       if self.run_folder is not None else ""))
        return self._finish(run_start, tokens_per_iter)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """One optimizer step over grad_accum_steps micro-batches; returns this rank's mean loss
        (still on the device) and the number of tokens all ranks saw."""
        c, accum = self.config, self.grad_accum_steps
        x_all, y_all = batch
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(zip(x_all.split(c.batch_size), y_all.split(c.batch_size))):
            with self.strategy.no_sync(self._step_model, last_micro_batch=i == accum - 1):
                with self.autocast():
                    _, loss = self._step_model(x, y)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)  # (fp16) so that clipping sees the true gradients
        if c.grad_norm_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_norm_clip)
        self.scaler.step(self.optimizer)  # (fp16: skipped if a gradient overflowed)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.strategy.after_step(self.model, self.optimizer)
        return loss_sum / accum, x_all.numel() * self.place.world_size

    # -- the steps of the loop -----------------------------------------------------------------------
    def _start(self) -> CfgNode:
        """Everything before the first step: set the process up, prepare the run folder, put the
        model together with its strategy and optimizer, and resume if asked."""
        c = self.config
        self.place = runtime.setup(c.device, c.dtype).place  # (idempotent: a job may have done it)
        if self.run_folder is not None and not self.run_folder.prepared:
            self.run_folder.prepare(self.resume, self.overwrite)
        # the same numbers on every rank (each takes its own rows); saved in checkpoints
        self.generator = torch.Generator().manual_seed(distributed.from_main(torch.initial_seed()))
        if self.resume:  # the weights first: into the model as built, before it is wrapped or sharded
            meta, folder = self._checkpoint_to_resume()
            checkpoint.load_weights(self.model, folder, self.device)
        # compiled once, on the first step (its cost is in summary.json as compile_s); evaluation
        # keeps the plain module, whose last batch may have another shape
        self._compiling = bool(c.compile or (c.compile is None and self.device.type == "cuda"))
        self._step_model = self.strategy.wrap(self.model, self.device, self.amp_dtype, self._compiling)
        self.optimizer = optim.build(self.model, c)  # (after sharding: it holds the shards)
        # fp16 needs its loss scaled so that small gradients do not underflow; otherwise a no-op.
        # (Sharded, a rank sees only its shards' gradients: DTensor takes the overflow flag's
        # maximum over the ranks, so all skip a step together.)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.strategy.start(self.model, self.optimizer, self.generator, self.state_dict, self.load_state_dict)
        if self.resume:
            self._restore(meta, folder)
        if self.run_folder is not None and self.is_main:
            self.run_folder.write_config(self.run_config)
            self.run_folder.start_metrics(self.metrics)
            if c.log_to:  # (the trackers' libraries load only when asked)
                from mingpt.training import tracking
                self.run_folder.trackers = tracking.open_trackers(c.log_to, self.run_folder.path, self.run_config)
        self.model.train()
        return c

    def _compile_seconds(self) -> float:
        """After the first step of a compiled run: its time, which was compiling (summary.json's
        compile_s), so that it is not counted as training time. 0 otherwise."""
        if not self._compiling:
            return 0.0
        self._compiling = False
        self.summary["compile_s"] = time.time() - self.iter_time
        return self.summary["compile_s"]

    def _validate(self, done: int) -> bool:
        """Evaluate on the validation set (if any) after iteration `done`; returns whether it is
        the best so far. (Stopping notes whether it reached the target.)"""
        if self.val_dataset is None:
            return False
        self.val_loss = self.evaluate(self.val_dataset)
        self.log(val_loss=self.val_loss)
        improved = self.val_loss < self.best_val
        if improved:
            self.best_val = self.summary["val_loss"] = self.val_loss
        self.stopping.evaluated(self.val_loss, done, self.summary)
        self.trigger_callbacks("on_eval_end")
        return improved

    def _score_task(self, done: int) -> None:
        """Score the eval_task, when one is set and due, into this iteration's metrics row and the
        summary: {name}_{score} (hellaswag_acc, hellaswag_acc_norm, hellaswag_n)."""
        c = self.config
        if self.eval_task is None or not (done % (c.eval_task_interval or c.eval_interval) == 0
                                          or done == c.max_iters):
            return
        scores = {f"{c.eval_task}_{key}": value for key, value in
                  self.eval_task(self.model, self.device, self.autocast).items()}
        self.log(**scores)
        self.summary.update(scores)
        self.model.train()

    def task_scores(self) -> list[str]:
        """The metrics the eval_task writes, for the plot (none without one)."""
        prefix = f"{self.config.eval_task}_"
        return sorted({k for row in self.metrics for k in row if k.startswith(prefix) and not k.endswith("_n")})

    def _write_row(self, window: LogWindow, done: int, lr: float, tokens_per_iter: int, run_start: float,
                   progress: tqdm) -> LogWindow:
        """Close the logging window into a metrics row (metrics.jsonl); returns the next window."""
        row = window.close(done, lr, tokens_per_iter, {**self._pending, **self.strategy.counters(done)})
        row["elapsed_s"] = time.time() - run_start
        self.train_seconds += row["ms"] * (done - window.start_iter) / 1000
        self._pending = {}
        self.metrics.append(row)
        if self.run_folder is not None and self.is_main:
            self.run_folder.append_metrics(row)
        progress.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        return LogWindow(done)

    def _finish(self, run_start: float, tokens_per_iter: int, callbacks: bool = True) -> dict[str, Any]:
        """Write summary.json and the plot. callbacks=False for a run stopped by a signal: it is
        not over (it can be resumed), so on_train_end is not called."""
        self.summary = {
            "iters": self.iter_num,
            "wall_s": time.time() - run_start,
            "ms_per_iter": 1000 * self.train_seconds / max(self.iter_num, 1),
            "tokens_per_s": tokens_per_iter * self.iter_num / max(self.train_seconds, 1e-9),
            "final_loss": self.metrics[-1]["loss"] if self.metrics else None,
            **self.strategy.counters(self.iter_num),
            **self.summary,
            "stop_reason": self.stopping.reason or "max_iters",
        }
        if self.config.target_val_loss is not None or self.config.max_seconds is not None:
            self.summary["run_s"] = self.stopping.clock()  # the clock they read
        if callbacks:
            self.trigger_callbacks("on_train_end")
        if self.run_folder is not None and self.is_main:
            self.run_folder.write_summary(self.summary)
            self.run_folder.plot(self.metrics, scores=self.task_scores() if self.eval_task else ())
        return self.summary

    # -- checkpoints ----------------------------------------------------------------------------------
    def _save_checkpoint(self, best: bool = False) -> None:
        """Every rank takes part (its RNG states; its shards under FSDP); rank 0 writes."""
        if self.run_folder is None:
            return
        rng_states = distributed.gather(checkpoint.rng_state())
        weights, optimizer_state = self.strategy.full_state(self.model, self.optimizer)
        strategy_state, strategy_tensors = self.strategy.checkpoint_state()  # (DiLoCo: the outer state)

        def write() -> None:
            rng_json, rng_tensors = checkpoint.pack_rng_states(rng_states)
            state = {"lr": self.lr_at(self.iter_num), "val_loss": self.val_loss,
                     "best_val": self.best_val if math.isfinite(self.best_val) else None,
                     "train_seconds": self.train_seconds, "run_seconds": self.stopping.clock(),
                     "optimizer_kind": checkpoint.optimizer_kind(self.optimizer), "summary": self.summary,
                     "rng": rng_json, "grad_scaler": self.scaler.state_dict(), "run_config": self.run_config,
                     "metrics": self.metrics, "strategy": strategy_state}
            tensors = {**rng_tensors, **strategy_tensors, "data.generator": self.generator.get_state()}
            self.run_folder.save_checkpoint(self.model, self.iter_num, keep_last=self.config.keep_last,
                                            best=best, extra=state, optimizer=self.optimizer, tensors=tensors,
                                            weights=weights, optimizer_state=optimizer_state)

        distributed.run_together(write, main_only=True)  # a failed save (full disk) stops every rank

    def _checkpoint_to_resume(self) -> tuple[dict, Path]:
        """The checkpoint to resume from: one of another model is refused (the optimizer is
        checked in _restore), other changed settings get a warning (checkpoint.check_resume)."""
        meta, folder = self.run_folder.find_checkpoint(self.checkpoint)
        checkpoint.check_resume(meta, folder, self.model, self.run_config, warn=self.is_main)
        return meta, folder

    def _restore(self, meta: dict, folder: Path) -> None:
        """Continue exactly where the checkpoint in folder left off: optimizer, iteration, RNGs
        (each rank its own), data order, metrics. (_start has loaded the weights.)"""
        checkpoint.check_same_optimizer(meta, self.optimizer, self.config, folder)
        loader = self.strategy.optimizer_state_loader(self.model, self.optimizer)
        tensors = checkpoint.load_state(folder, self.optimizer, loader)
        self.generator.set_state(tensors["data.generator"])
        self.strategy.load_checkpoint_state(meta.get("strategy") or {}, tensors)
        checkpoint.restore_rng_state(meta["rng"], tensors, self.place.rank)
        if meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        self.iter_num, self.val_loss, self.train_seconds = meta["iter_num"], meta["val_loss"], meta["train_seconds"]
        self.best_val = math.inf if meta["best_val"] is None else meta["best_val"]
        self.stopping.seconds_before = meta.get("run_seconds", 0.0)  # (0: a checkpoint older than the clock)
        self.summary = meta["summary"]
        self.metrics = meta["metrics"]  # metrics.jsonl is rewritten from these: rows after the
        # checkpoint (or a row cut short by a kill) are dropped, and the resumed run writes them anew
        log.info(f"resuming from {folder} (iteration {self.iter_num})")

    # -- the whole live state, e.g. for a DiLoCo peer that heals from this run ------------------------
    def state_dict(self) -> dict[str, Any]:
        """What another run needs to go on exactly from here: weights, optimizer moments, the
        iteration (and with it the schedule and the data position), the loss scale."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "iter_num": self.iter_num, "grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take over another run's state_dict() (a DiLoCo worker joining late heals so)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["grad_scaler"])
        if self.is_main:
            log.info(f"healed from a live peer: iteration {self.iter_num} -> {state['iter_num']}")
        self.iter_num = state["iter_num"]
