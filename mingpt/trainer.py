"""Trainer: a training loop that knows nothing about GPT.

It trains any nn.Module whose forward(x, y) returns (logits, loss) on batches from a dataset:
either a token stream with get_batch(batch_size, generator) -> (x, y), which hands over whole
(B, T) batches, or any map-style Dataset of (x, y) pairs (minGPT's interface). Given a work_dir it
writes the run folder (run_folder.py). Its parts live apart: the schedule and optimizers in
optim.py, how several processes train together in parallel.py, process set-up in runtime.py,
validation in evaluate.py, the checkpoint format in checkpoint.py.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import signal
import threading
import time
from collections import defaultdict
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mingpt import checkpoint, distributed, evaluate, kernels, optim, parallel, runtime
from mingpt.distributed import Place
from mingpt.run_folder import RunFolder
from mingpt.utils import CfgNode, unwrap

log = logging.getLogger(__name__)
# a task scored during training: fn(model, device, autocast) -> {"acc": 0.31, ...}
EvalTask = Callable[[nn.Module, torch.device, Callable[[], AbstractContextManager]], dict[str, float]]


class Trainer:

    @staticmethod
    def get_default_config() -> CfgNode:
        return CfgNode(
            device="auto",  # 'auto' picks cuda, then mps, then cpu (under torchrun: cuda:LOCAL_RANK)
            num_workers=0,  # DataLoader workers, only for per-example datasets
            max_iters=None,  # None trains until stopped
            # end the run early (None: off): at the first evaluation whose val loss is <= target_val_loss,
            # or at the iteration by which the run has taken max_seconds (evaluations included; a
            # resumed run's seconds go on from its checkpoint). Either ends as max_iters does:
            # evaluated and saved. summary.json says which ended it (stop_reason). A wsd cooldown
            # also ends by max_seconds (max_iters may then be None; optim.lr_at)
            target_val_loss=None,
            max_seconds=None,
            batch_size=64,  # examples per micro-batch, in each process
            grad_accum_steps=1,  # micro-batches per optimizer step
            # examples per optimizer step over all processes; if set, grad_accum_steps follows
            # from it: global_batch_size / (batch_size x processes)
            global_batch_size=None,
            # 'auto': bf16 autocast on CUDA (fp16 with a gradient scaler on cards without bf16),
            # fp32 elsewhere; 'fast': also bf16 on CPUs with native bf16 (AVX-512 BF16, AMX); or
            # 'fp32', 'bf16', 'fp16'. Weights and optimizer state stay fp32
            dtype="auto",
            fsdp=False,  # under torchrun: shard weights, gradients and optimizer state (FSDP2), not DDP
            optimizer="adamw",  # or 'muon': Muon for the hidden matrices, AdamW for the rest (optim.py)
            learning_rate=3e-4,  # (with muon: AdamW's peak rate, for embeddings, head, gains, biases)
            betas=(0.9, 0.95),
            weight_decay=0.1,  # applied only where the model's configure_optimizers says
            grad_norm_clip=1.0,  # 0 disables clipping
            warmup_iters=0,  # linear warmup from 0 to learning_rate
            lr_decay=False,  # decay to min_lr_ratio * learning_rate at max_iters (minGPT: constant)
            min_lr_ratio=0.1,
            lr_schedule="cosine",  # the decay: 'cosine', or 'wsd' (constant, then a cooldown at the end)
            cooldown_fraction=0.2,  # wsd: the last fraction of max_iters that cools down to the floor
            cooldown_shape="linear",  # wsd: 'linear' or '1-sqrt'
            muon_lr=0.02,  # muon: the matrices' peak rate (the schedule scales it as it scales learning_rate)
            muon_momentum=0.95,  # muon: Nesterov momentum, reached after muon_momentum_warmup_iters
            muon_momentum_start=0.85,
            muon_momentum_warmup_iters=300,
            muon_weight_decay=0.0,  # muon: decoupled weight decay of the matrices
            muon_ns_dtype="auto",  # muon: Newton-Schulz in 'fp32', 'bf16', 'auto' (bf16 on CUDA only) or
            # 'fast' (bf16 on CUDA and on CPUs with native bf16: AVX-512 BF16, AMX)
            eval_interval=250,  # iterations between validation evaluations (and checkpoints)
            eval_iters=50,  # batches per evaluation (None: the whole validation set)
            # a task scored during training, e.g. 'hellaswag' (None: off): its name, which prefixes its
            # scores in metrics.jsonl (hellaswag_acc, ...); the job hands the Trainer the task itself
            # (eval_task=fn, fn(model, device, autocast) -> {score: value}). Every eval_task_interval
            # iterations (None: every eval_interval) and at the last
            eval_task=None,
            eval_task_interval=None,
            log_interval=10,  # iterations between rows of metrics.jsonl
            keep_last=2,  # checkpoints kept (saved every eval_interval; the best is kept too)
            compile=None,  # torch.compile the training step: True, False, or None (on CUDA only)
            progress_bar=True,
            # also send metrics.jsonl's rows to 'tensorboard' and/or 'wandb' (a list, or comma-separated;
            # None: neither). The run folder stays the source of truth (tracking.py; optional extras)
            log_to=None,
        )

    def __init__(self, config: CfgNode, model: nn.Module, train_dataset: Dataset,
                 val_dataset: Dataset | None = None, work_dir: str | Path | RunFolder | None = None,
                 run_config: dict | None = None, resume: bool = False, overwrite: bool = False,
                 checkpoint: str | None = None, eval_task: EvalTask | None = None,
                 diloco: CfgNode | None = None) -> None:
        """work_dir: the run folder (None writes nothing). A folder that already holds a run is
        refused unless resume=True (continue from its newest intact checkpoint, or the one
        `checkpoint` names, exactly) or overwrite=True (start over). eval_task: the task that
        config.eval_task names (evaluate.MultipleChoiceTask, or any such callable).

        diloco: a DiLoCo section (mingpt/diloco.py); with its sync_every set, this run is one
        worker of a DiLoCo group (torchft), and writes the run folder it is given.

        Nothing happens until run(): then the process is set up (runtime.setup: under torchrun it
        joins the job, see mingpt/distributed.py) and the run folder prepared.
        """
        check_config(config)
        _check_what_the_config_needs(config, val_dataset, eval_task)
        self.eval_task = eval_task
        self.config = config
        chosen = runtime.choose(config.device, config.dtype)  # (worked out; nothing is changed)
        self.place, self.device, self.amp_dtype = chosen.place, chosen.device, chosen.amp_dtype
        self.grad_accum_steps = resolve_accumulation(config, self.place.world_size)
        self.model = model
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.run_folder = work_dir if isinstance(work_dir, RunFolder) or work_dir is None else RunFolder(work_dir)
        self.resume, self.overwrite, self.checkpoint = resume, overwrite, checkpoint
        global_batch = config.batch_size * self.grad_accum_steps * self.place.world_size
        self.run_config = {  # with what the environment and 'auto' settings made of the config
            **(run_config if run_config is not None else {"trainer": config.to_dict()}),
            "resolved": {"world_size": self.place.world_size, "grad_accum_steps": self.grad_accum_steps,
                         "global_batch_size": global_batch, "dtype": runtime.dtype_name(self.amp_dtype)}}
        if diloco is not None and "diloco" not in self.run_config:
            self.run_config["diloco"] = diloco.to_dict()
        self.strategy = parallel.choose(config.fsdp, self.place, diloco, self.run_config)
        self.callbacks: dict[str, list[Callable[[Trainer], None]]] = defaultdict(list)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.generator: torch.Generator | None = None  # draws the training batches (in run)
        # state visible to callbacks (minGPT's names)
        self.iter_num = 0  # iterations completed before the current one
        self.iter_time = 0.0
        self.iter_dt = 0.0
        self.loss: torch.Tensor | None = None
        self.val_loss: float | None = None
        self.best_val = math.inf
        self.train_seconds = 0.0
        self.metrics: list[dict] = []  # every row written to metrics.jsonl
        self.summary: dict[str, Any] = {}  # projects may add their final figures here
        self._pending: dict[str, Any] = {}
        self._stop_requested = False
        self._signal: int | None = None
        self.stop_reason: str | None = None  # why run() ended (summary.json's stop_reason; _agree_to_stop)
        self._seconds_before = 0.0  # a resumed run's seconds up to its checkpoint
        self._clock_origin = 0.0  # the time.time() at which the run's clock (max_seconds, target_s) read 0
        self._time_fraction: float | None = None  # with max_seconds: the share used, agreed by the ranks

    @property
    def work_dir(self) -> Path | None:
        """The run folder's path (None: the run writes nothing)."""
        return self.run_folder.path if self.run_folder is not None else None

    @property
    def is_main(self) -> bool:
        """True in the process that writes the run folder (rank 0): print and save only there."""
        return self.place.is_main

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
        self._stop_requested = True

    def lr_at(self, it: int) -> float:
        """Learning rate of iteration `it` (optim.lr_at; with max_seconds, a WSD cooldown also
        follows the share of the time budget used so far)."""
        return optim.lr_at(it, self.config, self._time_fraction)

    def autocast(self) -> AbstractContextManager:
        """Mixed precision around a forward pass (a no-op context for fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def batches(self, dataset: Dataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless training data from dataset, one optimizer step at a time (see draw_batches)."""
        return draw_batches(dataset, self.generator, self.place, self.config.batch_size * self.grad_accum_steps,
                            self.device, self.config.num_workers)

    def evaluate(self, dataset: Dataset) -> float:
        """Mean loss over fixed batches of dataset (the same ones every call)."""
        share = self.strategy.shares_evaluation
        return evaluate.val_loss(self.model, dataset, self.config.batch_size, self.config.eval_iters,
                                 self.device, self.autocast, self.place, share)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until max_iters, target_val_loss, max_seconds or stop(); returns the summary (also
        written to summary.json, with the stop_reason).

        SIGINT / SIGTERM end the run after the current iteration, with a checkpoint saved (and
        summary.json, stop_reason "interrupted").
        """
        c = self._start()
        batches = self.batches(self.train_dataset)
        window, tokens_per_iter = _LogWindow(self.iter_num), 0
        run_start = self.iter_time = time.time()
        stopping = self._start_clock(run_start)  # (a resumed run may have met its target or budget)
        progress = tqdm(total=c.max_iters, initial=self.iter_num, disable=not (c.progress_bar and self.is_main),
                        mininterval=1.0, dynamic_ncols=True, desc="training")
        try:
            with _signals_stop(self):
                while (c.max_iters is None or self.iter_num < c.max_iters) and not stopping:
                    lr = self.lr_at(self.iter_num)
                    optim.apply_schedule(self.optimizer, self.iter_num, c, lr)  # lr, Muon's momentum
                    self.strategy.before_draw(self.generator, self.iter_num)  # (DiLoCo: each worker its own)
                    self.loss, tokens_per_iter = self._step(next(batches))  # no host sync per step
                    window.paused += self._compile_seconds()
                    window.losses.append(self.loss)
                    now = time.time()
                    self.iter_dt, self.iter_time = now - self.iter_time, now
                    done = self.iter_num + 1
                    out_of_time = self._out_of_time(now)  # (agreed by the ranks: they evaluate together)
                    due = done % c.eval_interval == 0 or done == c.max_iters or out_of_time  # evaluate and save

                    paused_at = time.time()  # evaluation and callbacks are not training time
                    improved = due and self._validate()
                    self._score_task(done)
                    reached = due and self._reached_target(done)
                    self.trigger_callbacks("on_batch_end")
                    window.paused += time.time() - paused_at
                    self.iter_num = done
                    progress.update(1)

                    stopping, pending = self._agree_to_stop(reached, out_of_time)
                    if done % c.log_interval == 0 or pending or due or stopping:
                        window = self._write_row(window, done, lr, tokens_per_iter, run_start, progress)
                    if due or stopping:  # after the row, so a resumed run has every row up to here
                        self._save_checkpoint(best=improved)
        finally:
            progress.close()
            self.strategy.close()
            if self.run_folder is not None:
                self.run_folder.close_metrics()
        if self._signal is not None:
            self._finish(run_start, tokens_per_iter, callbacks=False)  # (stop_reason "interrupted")
            raise KeyboardInterrupt(f"stopped by signal {self._signal} after iteration {self.iter_num}"
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
        model together with its kernels, strategy and optimizer, and resume if asked."""
        c = self.config
        self.place = runtime.setup(c.device, c.dtype).place  # (idempotent: a job may have done it)
        if self.run_folder is not None and not self.run_folder.prepared:
            self.run_folder.prepare(self.resume, self.overwrite)
        # the same numbers on every rank (each takes its own rows); saved in checkpoints
        self.generator = torch.Generator().manual_seed(distributed.from_main(torch.initial_seed()))
        if self.device.type == "cpu" and kernels.kernels_of(self.model) is None:
            kernels.use_cpu_kernels(self.model)  # faster large products (kernels/linear.py)
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
        self.strategy.start(self.model, self.optimizer, self.generator, self._live_state, self._load_live_state)
        if self.resume:
            self._restore(meta, folder)
        if self.run_folder is not None and self.is_main:
            self.run_folder.write_config(self.run_config)
            self.run_folder.start_metrics(self.metrics)
            if c.log_to:  # (the trackers' libraries load only when asked)
                from mingpt import tracking
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

    def _validate(self) -> bool:
        """Evaluate on the validation set (if any); returns whether it is the best so far."""
        if self.val_dataset is None:
            return False
        self.val_loss = self.evaluate(self.val_dataset)
        self.log(val_loss=self.val_loss)
        improved = self.val_loss < self.best_val
        if improved:
            self.best_val = self.summary["val_loss"] = self.val_loss
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

    def _agree_to_stop(self, reached: bool = False, out_of_time: bool = False) -> tuple[bool, bool]:
        """(stop now, a row is pending), the same on every rank: a signal or a callback's stop()
        may come to some ranks only, and every rank must stop, and write a row, at the same
        iteration. (The signal is read first and never cleared here: one that lands between these
        reads stops the next iteration.) Sets stop_reason to the first that holds of "interrupted"
        (a signal), "target_val_loss" (reached), "max_seconds" (out_of_time, agreed already) and
        "stop()" (called by a callback: the adder's, once its test set is solved)."""
        signum = self._signal or 0
        stop, pending, signum, reached = distributed.max_over_ranks(self._stop_requested or signum > 0,
                                                                    bool(self._pending), signum, reached)
        if signum:
            self._signal = signum
        reasons = {"interrupted": signum, "target_val_loss": reached, "max_seconds": out_of_time, "stop()": stop}
        self.stop_reason = next((reason for reason, met in reasons.items() if met), None)
        return self.stop_reason is not None, bool(pending)

    # -- stopping early: a target val loss, a time budget -----------------------------------------------
    def _start_clock(self, run_start: float) -> bool:
        """Start the run's clock, which max_seconds and target_s read: seconds since training began,
        evaluations and checkpoints included, going on from a resumed run's checkpoint (so the time
        between a kill and the resume is not counted, nor that of the iterations after the
        checkpoint, which are trained again). Returns whether a resumed run had already reached its
        target (the same one) or taken its max_seconds: like one past its max_iters, it trains no
        further."""
        c = self.config
        self._clock_origin = run_start - self._seconds_before
        if c.max_seconds is not None:
            self._time_fraction = self._seconds_before / c.max_seconds
        if c.target_val_loss is not None and self.summary.get("target_val_loss") != c.target_val_loss:
            self.summary.update(target_val_loss=c.target_val_loss, target_reached=False, target_iter=None,
                                target_s=None)
        if c.target_val_loss is not None and self.summary["target_reached"]:
            self.stop_reason = "target_val_loss"
        elif c.max_seconds is not None and self._seconds_before >= c.max_seconds:
            self.stop_reason = "max_seconds"
        return self.stop_reason is not None

    def _out_of_time(self, now: float) -> bool:
        """Whether the run has taken its max_seconds, on any rank: the ranks' clocks differ a little,
        and all must evaluate, save and stop at the same iteration (and follow the same schedule:
        the share of the budget used, for lr_at, is the slowest rank's). One small collective per
        iteration (on the CPU), and only when max_seconds is set."""
        c = self.config
        if c.max_seconds is None:
            return False
        used = (now - self._clock_origin) / c.max_seconds  # (each rank's share of its own budget)
        out, parts_per_million = distributed.max_over_ranks(used >= 1, int(1e6 * used))
        out, self._time_fraction = bool(out), parts_per_million / 1e6
        if out and self.is_main:
            log.info(f"the run has taken its max_seconds={c.max_seconds}: evaluating, saving and stopping")
        return out

    def _reached_target(self, done: int) -> bool:
        """Whether this evaluation's val loss is at or below target_val_loss. The first time, the
        summary records when: iteration `done`, and the run's clock after the evaluation."""
        c = self.config
        if c.target_val_loss is None or self.val_loss is None or self.val_loss > c.target_val_loss:
            return False
        if not self.summary["target_reached"]:
            self.summary.update(target_reached=True, target_iter=done, target_s=time.time() - self._clock_origin)
            if self.is_main:
                log.info(f"val loss {self.val_loss:.4f} reached the target {c.target_val_loss} at iteration "
                         f"{done}, {self.summary['target_s']:.1f} s into the run: saving and stopping")
        return True

    def _write_row(self, window: _LogWindow, done: int, lr: float, tokens_per_iter: int, run_start: float,
                   progress: tqdm) -> _LogWindow:
        """Close the logging window into a metrics row (metrics.jsonl); returns the next window."""
        row = window.close(done, lr, tokens_per_iter, {**self._pending, **self.strategy.counters(done)})
        row["elapsed_s"] = time.time() - run_start
        self.train_seconds += row["ms"] * (done - window.start_iter) / 1000
        self._pending = {}
        self.metrics.append(row)
        if self.run_folder is not None and self.is_main:
            self.run_folder.append_metrics(row)
        progress.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        return _LogWindow(done)

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
            "stop_reason": self.stop_reason or "max_iters",
        }
        if self.config.target_val_loss is not None or self.config.max_seconds is not None:
            self.summary["run_s"] = time.time() - self._clock_origin  # the clock they read
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
                     "train_seconds": self.train_seconds, "run_seconds": time.time() - self._clock_origin,
                     "optimizer_kind": optimizer_kind(self.optimizer), "summary": self.summary, "rng": rng_json,
                     "grad_scaler": self.scaler.state_dict(), "run_config": self.run_config,
                     "metrics": self.metrics, "strategy": strategy_state}
            tensors = {**rng_tensors, **strategy_tensors, "data.generator": self.generator.get_state()}
            self.run_folder.save_checkpoint(self.model, self.iter_num, keep_last=self.config.keep_last,
                                            best=best, extra=state, optimizer=self.optimizer, tensors=tensors,
                                            weights=weights, optimizer_state=optimizer_state)

        distributed.run_together(write, main_only=True)  # a failed save (full disk) stops every rank

    def _checkpoint_to_resume(self) -> tuple[dict, Path]:
        """The checkpoint to resume from. One of another model is refused (check_same_model; the
        optimizer is checked in _restore); other changed settings get a warning."""
        meta, folder = self.run_folder.find_checkpoint(self.checkpoint)
        check_same_model(meta.get("model_config"), self.model, folder)
        changed = _changed_keys(meta["run_config"], json.loads(json.dumps(self.run_config)))
        if changed and self.is_main:
            log.warning(f"resuming with changed settings ({', '.join(changed)}): the run will not "
                        f"match an uninterrupted one exactly")
        return meta, folder

    def _restore(self, meta: dict, folder: Path) -> None:
        """Continue exactly where the checkpoint in folder left off: optimizer, iteration, RNGs
        (each rank its own), data order, metrics. (_start has loaded the weights.)"""
        check_same_optimizer(meta, self.optimizer, self.config, folder)
        loader = self.strategy.optimizer_state_loader(self.model, self.optimizer)
        tensors = checkpoint.load_state(folder, self.optimizer, loader)
        self.generator.set_state(tensors["data.generator"])
        self.strategy.load_checkpoint_state(meta.get("strategy") or {}, tensors)
        rng = checkpoint.unpack_rng_state(meta["rng"], tensors, self.place.rank)
        if rng is None:
            log.warning(f"the checkpoint holds no RNG state for rank {self.place.rank} (it was saved by "
                        f"fewer processes): this rank's dropout starts afresh")
        else:
            checkpoint.set_rng_state(*rng)
        if meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        self.iter_num = meta["iter_num"]
        self.val_loss = meta["val_loss"]
        self.best_val = math.inf if meta["best_val"] is None else meta["best_val"]
        self.train_seconds = meta["train_seconds"]
        self._seconds_before = meta.get("run_seconds", 0.0)  # (0: a checkpoint older than the clock)
        self.summary = meta["summary"]
        self.metrics = meta["metrics"]  # metrics.jsonl is rewritten from these: rows after the
        # checkpoint (or a row cut short by a kill) are dropped, and the resumed run writes them anew
        log.info(f"resuming from {folder} (iteration {self.iter_num})")

    # -- the whole state, handed to a DiLoCo peer that heals from this run ---------------------------------
    def _live_state(self) -> dict[str, Any]:
        """What a worker joining late takes from this one (DiLoCo's healing): weights, optimizer
        moments, the iteration (and with it the schedule and the data position), the loss scale."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "iter_num": self.iter_num, "grad_scaler": self.scaler.state_dict()}

    def _load_live_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["grad_scaler"])
        if self.is_main:
            log.info(f"healed from a live peer: iteration {self.iter_num} -> {state['iter_num']}")
        self.iter_num = state["iter_num"]


def draw_batches(dataset: Dataset, generator: torch.Generator, place: Place, rows_per_rank: int,
                 device: torch.device, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless training data on the device, one optimizer step at a time: this rank's
    rows_per_rank rows (batch_size x grad_accum_steps) of a global batch drawn from generator.

    Every rank draws the same global batch from its copy of the generator and takes rows
    [rank * n, (rank + 1) * n). So no two ranks see the same row, 2 ranks with batch b train
    on exactly the examples of 1 rank with batch 2b (or with 2 micro-batches of b), and a
    resumed run draws on from the saved generator.
    """
    n, cuda = rows_per_rank, device.type == "cuda"
    rows, size = slice(place.rank * n, (place.rank + 1) * n), n * place.world_size
    if hasattr(dataset, "get_batch"):
        # a stream that can cut only some rows (TokenStream) need not read the other ranks'
        cut_rows = place.world_size > 1 and "rows" in inspect.signature(dataset.get_batch).parameters

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            if cut_rows:
                return dataset.get_batch(size, generator, rows=rows)
            x, y = dataset.get_batch(size, generator)
            return x[rows], y[rows]

        batches: Iterator = (draw() for _ in iter(int, 1))
    else:  # minGPT's per-example datasets: a DataLoader fetches the rows the generator picks
        steps = (torch.randint(len(dataset), (size,), generator=generator)[rows].tolist()
                 for _ in iter(int, 1))
        batches = iter(DataLoader(dataset, batch_sampler=steps, num_workers=num_workers))
    for x, y in batches:
        if cuda:
            x, y = x.pin_memory(), y.pin_memory()
        yield x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (resume flags, the
    length of the run, its stopping conditions and its trackers aside)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b and key not in ("resume", "overwrite", "max_iters", "checkpoint", "target_val_loss",
                                    "max_seconds", "log_to"):
            changed.append(f"{prefix}{key}")
    return changed


# -- resuming with the model and optimizer of the checkpoint -------------------------------------------
# model keys a resumed run may change: a preset's name (the values it stands for are compared one by
# one) and dropout, which changes how the model trains, not what its weights are
_MODEL_KEYS_FREE_ON_RESUME = ("model_type", "embd_pdrop", "resid_pdrop", "attn_pdrop")
# parameter-group keys that the loop sets every iteration (the schedule: lr, Muon's momentum), or that
# say how this device computes the update: they may differ from the checkpoint's
_GROUP_KEYS_FREE_ON_RESUME = ("params", "param_names", "lr", "initial_lr", "momentum", "foreach", "fused",
                              "capturable", "differentiable")
_NEW_RUN = "or start a new run (another --system.work_dir, or --system.overwrite=true)"


def check_same_model(saved: dict | None, model: nn.Module, folder: Path) -> None:
    """Refuse to resume the checkpoint in folder, whose model config is `saved`, into a model
    configured otherwise (other parts, pattern, window, dims, ...): its weights would not fit, or
    would fit parts they were not trained for, and the run would mix two models. Names the first
    differing key with both values. Keys the checkpoint predates and _MODEL_KEYS_FREE_ON_RESUME
    are not compared, nor anything for a model without a config."""
    config = getattr(unwrap(model), "config", None)
    if saved is None or not hasattr(config, "to_dict"):
        return
    current = json.loads(json.dumps(config.to_dict()))  # (tuples as the lists the checkpoint holds)
    for key, value in current.items():
        if key in saved and key not in _MODEL_KEYS_FREE_ON_RESUME and saved[key] != value:
            raise ValueError(f"cannot resume {folder.name} with model.{key}={value!r}: it was trained with "
                             f"model.{key}={saved[key]!r}, and a run keeps its model; resume with that, "
                             f"{_NEW_RUN}")


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer's class, or an OptimizerSet's members' in order: 'AdamW', 'Muon+AdamW'."""
    return "+".join(type(o).__name__ for o in getattr(optimizer, "optimizers", [optimizer]))


def check_same_optimizer(meta: dict, optimizer: torch.optim.Optimizer, config: CfgNode, folder: Path) -> None:
    """Refuse to resume the checkpoint in folder (metadata `meta`) with another optimizer, before
    its state is loaded: another kind keeps other state, and load_state_dict restores the
    parameter groups, so a setting kept there (betas, weight_decay, lr_mult, ...) that differs
    from the checkpoint's would be silently replaced by it. Names the first difference with both
    values; what the loop sets every iteration may differ (_GROUP_KEYS_FREE_ON_RESUME)."""
    kind, saved_kind = optimizer_kind(optimizer), meta.get("optimizer_kind")
    if saved_kind is not None and kind != saved_kind:
        raise ValueError(f"cannot resume {folder.name} with the optimizer {kind}: it was trained with "
                         f"{saved_kind}; resume with that, {_NEW_RUN}")
    saved_groups = (meta.get("optimizer") or {}).get("param_groups")
    if saved_groups is None:
        return
    groups = json.loads(json.dumps([{k: v for k, v in g.items() if k not in _GROUP_KEYS_FREE_ON_RESUME}
                                    for g in optimizer.param_groups], default=str))
    if len(groups) != len(saved_groups):
        raise ValueError(f"cannot resume {folder.name} with an optimizer of {len(groups)} parameter groups: "
                         f"it was trained with {len(saved_groups)}; resume with its settings, {_NEW_RUN}")
    for i, (group, saved) in enumerate(zip(groups, saved_groups)):
        for key, value in group.items():
            if key in saved and saved[key] != value:
                setting = f"trainer.{key}" if hasattr(config, key) else f"the optimizer's {key}"
                raise ValueError(f"cannot resume {folder.name} with {setting}={value!r} (parameter group {i}): "
                                 f"it was trained with {saved[key]!r}, which its saved state would silently "
                                 f"keep; resume with that, {_NEW_RUN}")


@contextmanager
def _signals_stop(trainer: Trainer):
    """While training, SIGINT and SIGTERM ask the trainer to stop after the current iteration."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        trainer._signal = signum
        trainer.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _LogWindow:
    """The iterations since the last metrics row: their summed loss and their training time."""

    def __init__(self, start_iter: int = 0) -> None:
        self.start_iter = start_iter
        self.start_time = time.time()
        self.paused = 0.0  # seconds spent evaluating or in callbacks
        self.losses: list[torch.Tensor] = []  # one per iteration, still on the device

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


def resolve_accumulation(c: CfgNode, world_size: int) -> int:
    """Micro-batches per optimizer step: grad_accum_steps, or what makes up global_batch_size."""
    if c.global_batch_size is None:
        return c.grad_accum_steps
    per_pass = c.batch_size * world_size
    if c.grad_accum_steps != 1 or c.global_batch_size % per_pass:
        raise ValueError(f"trainer.global_batch_size={c.global_batch_size} must be a multiple of "
                         f"trainer.batch_size x processes = {c.batch_size} x {world_size} = {per_pass}, "
                         f"with trainer.grad_accum_steps left at 1 (it follows); change either")
    return c.global_batch_size // per_pass


def _check_what_the_config_needs(config: CfgNode, val_dataset: Dataset | None, eval_task: EvalTask | None) -> None:
    """Refuse a Trainer whose config asks for what it was not given: a target val loss without
    validation data, an eval_task's name without the task, or a task without its name."""
    if config.target_val_loss is not None and val_dataset is None:
        raise ValueError(f"trainer.target_val_loss={config.target_val_loss} needs validation data to be "
                         f"reached; pass a val_dataset, or leave the target at None")
    if config.eval_task is not None and eval_task is None:
        raise ValueError(f"trainer.eval_task={config.eval_task!r} needs the task itself: Trainer(..., "
                         f"eval_task=fn) (the jobs train, words and chargpt build it), or leave it at None")
    if eval_task is not None and config.eval_task is None:
        raise ValueError("Trainer(..., eval_task=fn) needs the task's name in trainer.eval_task "
                         "(e.g. 'hellaswag'), which prefixes its scores in metrics.jsonl")


def check_config(c: CfgNode) -> None:
    """Refuse impossible trainer settings before any work is done."""
    problems = []
    if c.batch_size < 1:
        problems.append(f"trainer.batch_size={c.batch_size} must be >= 1")
    if c.learning_rate <= 0:
        problems.append(f"trainer.learning_rate={c.learning_rate} must be > 0")
    if c.grad_accum_steps < 1:
        problems.append(f"trainer.grad_accum_steps={c.grad_accum_steps} must be >= 1")
    if c.max_iters is not None and c.max_iters < 0:
        problems.append(f"trainer.max_iters={c.max_iters} must be >= 0 (or None)")
    if c.global_batch_size is not None and c.global_batch_size < 1:
        problems.append(f"trainer.global_batch_size={c.global_batch_size} must be >= 1 (or None)")
    if c.dtype not in (*runtime.CHOICES, *runtime.DTYPES):
        problems.append(f"trainer.dtype={c.dtype!r} must be one of "
                        f"{', '.join(map(repr, (*runtime.CHOICES, *runtime.DTYPES)))}")
    if c.compile not in (None, True, False):
        problems.append(f"trainer.compile={c.compile!r} must be True, False or None (on CUDA only)")
    if c.eval_interval < 1 or c.log_interval < 1:
        problems.append("trainer.eval_interval and trainer.log_interval must be >= 1")
    if c.eval_task_interval is not None and (not isinstance(c.eval_task_interval, int) or c.eval_task_interval < 1):
        problems.append(f"trainer.eval_task_interval={c.eval_task_interval!r} must be >= 1, or None "
                        f"(every eval_interval)")
    for key in ("target_val_loss", "max_seconds"):
        value = getattr(c, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"trainer.{key}={value!r} must be a number, or None (off)")
        elif key == "max_seconds" and value <= 0:
            problems.append(f"trainer.max_seconds={value} must be > 0, or None (no time limit)")
    problems += optim.config_problems(c)  # the optimizer's and schedule's settings
    if problems:
        raise ValueError("; ".join(problems))
    if c.log_to:
        from mingpt import tracking
        tracking.names(c.log_to)  # an unknown tracker, or its package missing: refused now, before any work
