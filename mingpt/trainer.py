"""Trainer: a training loop that knows nothing about GPT.

It trains any nn.Module whose forward(x, y) returns (logits, loss) on batches from a dataset:
either a token stream with get_batch(batch_size, generator) -> (x, y), which hands over whole
(B, T) batches, or any map-style Dataset of (x, y) pairs (minGPT's interface). Given a work_dir it
writes the run folder: config.json, metrics.jsonl, summary.json, loss.png and a checkpoint.
Started by torchrun, every process builds the same Trainer and they train as one (DDP, or FSDP2
with trainer.fsdp): each draws its own rows of every batch, and only rank 0 writes.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import shutil
import signal
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mingpt import checkpoint, distributed
from mingpt.utils import CfgNode, keep_freed_memory, write_json_atomic

log = logging.getLogger(__name__)


class Trainer:

    @staticmethod
    def get_default_config() -> CfgNode:
        return CfgNode(
            device="auto",  # 'auto' picks cuda, then mps, then cpu (under torchrun: cuda:LOCAL_RANK)
            num_workers=0,  # DataLoader workers, only for per-example datasets
            max_iters=None,  # None trains until stopped
            batch_size=64,  # examples per micro-batch, in each process
            grad_accum_steps=1,  # micro-batches per optimizer step
            # examples per optimizer step over all processes; if set, grad_accum_steps follows
            # from it: global_batch_size / (batch_size x processes)
            global_batch_size=None,
            # 'auto': bf16 autocast on CUDA (fp16 with a gradient scaler on cards without bf16),
            # fp32 elsewhere; or 'fp32', 'bf16', 'fp16'. Weights and optimizer state stay fp32
            dtype="auto",
            fsdp=False,  # under torchrun: shard weights, gradients and optimizer state (FSDP2), not DDP
            learning_rate=3e-4,
            betas=(0.9, 0.95),
            weight_decay=0.1,  # applied only where the model's configure_optimizers says
            grad_norm_clip=1.0,  # 0 disables clipping
            warmup_iters=0,  # linear warmup from 0 to learning_rate
            lr_decay=True,  # cosine decay to min_lr_ratio * learning_rate at max_iters
            min_lr_ratio=0.1,
            eval_interval=250,  # iterations between validation evaluations
            eval_iters=50,  # batches per evaluation (None: the whole validation set)
            log_interval=10,  # iterations between rows of metrics.jsonl
            keep_last=2,  # checkpoints kept (saved every eval_interval; the best is kept too)
            compile=None,  # torch.compile the training step: True, False, or None (on CUDA only)
            progress_bar=True,
        )

    def __init__(self, config: CfgNode, model: nn.Module, train_dataset: Dataset,
                 val_dataset: Dataset | None = None, work_dir: str | Path | None = None,
                 run_config: dict | None = None, resume: bool = False, overwrite: bool = False) -> None:
        """work_dir: the run folder (None writes nothing). A folder that already holds a run is
        refused unless resume=True (continue from its latest checkpoint, exactly) or
        overwrite=True (start over).

        Under torchrun (or in a process group you set up) it joins the job: see mingpt/distributed.py.
        """
        check_config(config)
        self.config = config
        self.place = distributed.init()  # rank 0 of 1 outside torchrun
        self.device = distributed.local_device(resolve_device(config.device), self.place)
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults for re-allocated activations (see its docstring)
        self.amp_dtype = resolve_dtype(config.dtype, self.device)  # None: plain fp32
        if self.device.type == "cuda" and config.dtype != "fp32":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.grad_accum_steps = resolve_accumulation(config, self.place.world_size)
        self._sharded = config.fsdp and self.place.world_size > 1
        # a model to be sharded goes to the device unit by unit as it is sharded (in run)
        self.model = model if self._sharded else model.to(self.device)
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.work_dir = Path(work_dir) if work_dir is not None else None
        global_batch = config.batch_size * self.grad_accum_steps * self.place.world_size
        self.run_config = {  # with what the environment and 'auto' settings made of the config
            **(run_config if run_config is not None else {"trainer": config.to_dict()}),
            "resolved": {"world_size": self.place.world_size, "grad_accum_steps": self.grad_accum_steps,
                         "global_batch_size": global_batch, "dtype": dtype_name(self.amp_dtype)}}
        self.callbacks: dict[str, list[Callable[[Trainer], None]]] = defaultdict(list)
        self.optimizer: torch.optim.Optimizer | None = None
        # state visible to callbacks (minGPT's names)
        self.iter_num = 0  # iterations completed before the current one
        self.iter_time = 0.0
        self.iter_dt = 0.0
        self.loss: torch.Tensor | None = None
        self.val_loss: float | None = None
        self.metrics: list[dict] = []  # every row written to metrics.jsonl
        self.summary: dict[str, Any] = {}  # projects may add their final figures here
        self._pending: dict[str, Any] = {}
        self._stop_requested = False
        self._signal: int | None = None
        # draws the training batches, the same numbers on every rank (each takes its own rows);
        # saved in checkpoints so a resumed run sees the same data
        self.generator = torch.Generator().manual_seed(distributed.from_main(torch.initial_seed()))
        if self.place.rank > 0:  # dropout, though, differs: rank r draws from seed + r
            torch.manual_seed(torch.initial_seed() + self.place.rank)
        self.resume = resume
        if self.work_dir is not None:  # every rank checks; then rank 0 alone writes
            clear = distributed.run_together(lambda: check_run_folder(self.work_dir, resume, overwrite))
            distributed.run_together(lambda: make_run_folder(self.work_dir, clear), main_only=True)

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

    # -- the schedule ------------------------------------------------------------------------------
    def lr_at(self, it: int) -> float:
        """Learning rate of iteration `it`: linear warmup, then cosine decay to a floor."""
        c = self.config
        if it < c.warmup_iters:
            return c.learning_rate * (it + 1) / c.warmup_iters
        if not c.lr_decay or c.max_iters is None:
            return c.learning_rate
        progress = min(1.0, (it - c.warmup_iters) / max(1, c.max_iters - c.warmup_iters))
        min_lr = c.learning_rate * c.min_lr_ratio
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.learning_rate - min_lr)

    # -- data --------------------------------------------------------------------------------------
    def _batches(self, dataset: Dataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless training data on the device, one optimizer step at a time: this rank's
        grad_accum_steps x batch_size rows of a global batch drawn from self.generator.

        Every rank draws the same global batch from its copy of the generator and takes rows
        [rank * n, (rank + 1) * n). So no two ranks see the same row, 2 ranks with batch b train
        on exactly the examples of 1 rank with batch 2b (or with 2 micro-batches of b), and a
        resumed run draws on from the saved generator.
        """
        c, place, cuda = self.config, self.place, self.device.type == "cuda"
        n = c.batch_size * self.grad_accum_steps
        rows, size = slice(place.rank * n, (place.rank + 1) * n), n * place.world_size
        if hasattr(dataset, "get_batch"):
            # a stream that can cut only some rows (TokenStream) need not read the other ranks'
            cut_rows = place.world_size > 1 and "rows" in inspect.signature(dataset.get_batch).parameters

            def draw() -> tuple[torch.Tensor, torch.Tensor]:
                if cut_rows:
                    return dataset.get_batch(size, self.generator, rows=rows)
                x, y = dataset.get_batch(size, self.generator)
                return x[rows], y[rows]

            batches: Iterator = (draw() for _ in iter(int, 1))
        else:  # minGPT's per-example datasets: a DataLoader fetches the rows the generator picks
            steps = (torch.randint(len(dataset), (size,), generator=self.generator)[rows].tolist()
                     for _ in iter(int, 1))
            batches = iter(DataLoader(dataset, batch_sampler=steps, num_workers=c.num_workers))
        for x, y in batches:
            if cuda:
                x, y = x.pin_memory(), y.pin_memory()
            yield x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)

    @torch.no_grad()
    def evaluate(self, dataset: Dataset) -> float:
        """Mean loss over fixed batches of dataset (the same ones every call). Several ranks share
        them out (rank r takes every world_size-th) and add up; sharded (FSDP), every rank must
        join every forward, so each evaluates them all."""
        c, place = self.config, self.place
        if hasattr(dataset, "eval_batches"):
            batches = dataset.eval_batches(c.batch_size, c.eval_iters)
        else:
            batches = islice(DataLoader(dataset, batch_size=c.batch_size, shuffle=False), c.eval_iters)
        share = place.world_size > 1 and not self._sharded
        self.model.eval()
        total, count = torch.zeros((), device=self.device), 0
        for i, (x, y) in enumerate(batches):
            if share and i % place.world_size != place.rank:
                continue
            with self._autocast():
                _, loss = self.model(x.to(self.device), y.to(self.device))
            total += loss.float() * len(x)
            count += len(x)
        self.model.train()
        sums = torch.stack([total, torch.tensor(float(count), device=self.device)])
        if share:
            distributed.total(sums)  # every rank's share
        return (sums[0] / sums[1].clamp(min=1)).item()

    def _autocast(self):
        """Mixed precision around the forward pass (a no-op context for fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until max_iters (or stop()); returns the summary (also written to summary.json).

        SIGINT / SIGTERM end the run after the current iteration, with a checkpoint saved.
        """
        model, c = self.model, self.config
        self.best_val, self.train_seconds = math.inf, 0.0
        if self.resume:  # the weights first: into the model as built, before it is wrapped or sharded
            meta, folder = self._checkpoint_to_resume()
            checkpoint.load_weights(model, folder, self.device)
        # compiled once, on the first step (its cost is in summary.json as compile_s); evaluation
        # keeps the plain module, whose last batch may have another shape
        compiling = bool(c.compile or (c.compile is None and self.device.type == "cuda"))
        self._step_model = self._training_module(compiling)
        if hasattr(model, "configure_optimizers"):  # (after sharding: it holds the shards)
            self.optimizer = model.configure_optimizers(c)
        else:
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=c.learning_rate,
                                               betas=tuple(c.betas), weight_decay=c.weight_decay)
        # fp16 needs its loss scaled so that small gradients do not underflow; otherwise a no-op.
        # (Sharded, a rank sees only its shards' gradients: DTensor takes the overflow flag's
        # maximum over the ranks, so all skip a step together.)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if self.resume:
            self._restore(meta, folder)
        metrics_file = self._open_metrics()
        batches = self._batches(self.train_dataset)
        window = _LogWindow(self.iter_num)
        tokens_per_iter = 0
        model.train()
        run_start = self.iter_time = time.time()
        progress = tqdm(total=c.max_iters, initial=self.iter_num, disable=not (c.progress_bar and self.is_main),
                        mininterval=1.0, dynamic_ncols=True, desc="training")
        stopping = False
        try:
            with _signals_stop(self):
                while (c.max_iters is None or self.iter_num < c.max_iters) and not stopping:
                    lr = self.lr_at(self.iter_num)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    self.loss, tokens_per_iter = self._step(batches)  # no host sync per step
                    if compiling:  # the first step compiles: report it apart, not as training time
                        self.summary["compile_s"] = time.time() - self.iter_time
                        window.paused += self.summary["compile_s"]
                        compiling = False
                    window.losses.append(self.loss)
                    now = time.time()
                    self.iter_dt, self.iter_time = now - self.iter_time, now
                    done = self.iter_num + 1
                    last = done == c.max_iters
                    save_due = done % c.eval_interval == 0 or last

                    paused_at = time.time()  # evaluation and callbacks are not training time
                    improved = False
                    if self.val_dataset is not None and save_due:
                        self.val_loss = self.evaluate(self.val_dataset)
                        self.log(val_loss=self.val_loss)
                        if self.val_loss < self.best_val:
                            self.best_val = self.summary["val_loss"] = self.val_loss
                            improved = True
                        self.trigger_callbacks("on_eval_end")
                    self.trigger_callbacks("on_batch_end")
                    window.paused += time.time() - paused_at
                    self.iter_num = done
                    progress.update(1)

                    # every rank must stop, and write a row, at the same iteration: a signal or a
                    # callback's stop() may come to some ranks only. (The signal is read first and
                    # never cleared here: one that lands between these reads stops the next iteration.)
                    signum = self._signal or 0
                    stop, pending, signum = distributed.max_over_ranks(
                        self._stop_requested or signum > 0, bool(self._pending), signum)
                    stopping = bool(stop)
                    if signum:
                        self._signal = signum
                    save_due = save_due or stopping
                    if done % c.log_interval == 0 or pending or save_due:
                        row = window.close(done, lr, tokens_per_iter, self._pending)
                        row["elapsed_s"] = time.time() - run_start
                        self.train_seconds += row["ms"] * (done - window.start_iter) / 1000
                        self._pending = {}
                        self.metrics.append(row)
                        if metrics_file is not None:
                            metrics_file.write(json.dumps(row) + "\n")
                            metrics_file.flush()
                        progress.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                        window = _LogWindow(done)
                    if save_due:  # after the row, so a resumed run has every row up to here
                        self._save_checkpoint(best=improved)
        finally:
            progress.close()
            if metrics_file is not None:
                metrics_file.close()
        if self._signal is not None:
            raise KeyboardInterrupt(f"stopped by signal {self._signal} after iteration {self.iter_num}"
                                    + ("; checkpoint saved, continue with --system.resume=true"
                                       if self.work_dir is not None else ""))

        self.summary = {
            "iters": self.iter_num,
            "wall_s": time.time() - run_start,
            "ms_per_iter": 1000 * self.train_seconds / max(self.iter_num, 1),
            "tokens_per_s": tokens_per_iter * self.iter_num / max(self.train_seconds, 1e-9),
            "final_loss": self.metrics[-1]["loss"] if self.metrics else None,
            **self.summary,
        }
        self.trigger_callbacks("on_train_end")
        if self.work_dir is not None and self.is_main:
            write_json_atomic(self.work_dir / "summary.json", self.summary)
            plot_losses(self.metrics, self.work_dir / "loss.png")
        return self.summary

    def _training_module(self, compiling: bool) -> nn.Module:
        """What the training step calls: the model, compiled if asked, and with several
        processes sharded in place (FSDP2, then compiled) or replicated (DDP around the compiled
        model, as nanoGPT does: DDP's no_sync then works as in eager mode)."""
        model = self.model
        if self._sharded:
            model = distributed.shard(model, self.device, self.amp_dtype)
        if compiling:
            model = torch.compile(model)
        if self.place.world_size > 1 and not self._sharded:
            model = distributed.replicate(model, self.device)
        return model

    def _step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, int]:
        """One optimizer step over grad_accum_steps micro-batches; returns this rank's mean loss
        (still on the device) and the number of tokens all ranks saw."""
        c, accum = self.config, self.grad_accum_steps
        x_all, y_all = next(batches)
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(zip(x_all.split(c.batch_size), y_all.split(c.batch_size))):
            # DDP averages the gradients over the ranks once, in the last micro-batch's backward
            with distributed.no_sync(self._step_model, skip=i < accum - 1):
                with self._autocast():
                    _, loss = self._step_model(x, y)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)  # (fp16) so that clipping sees the true gradients
        if c.grad_norm_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_norm_clip)
        self.scaler.step(self.optimizer)  # (fp16: skipped if a gradient overflowed)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / accum, x_all.numel() * self.place.world_size

    # -- the run folder and checkpoints ----------------------------------------------------------
    def _open_metrics(self):
        """Write config.json and open metrics.jsonl (a resumed run keeps the rows up to its
        checkpoint and drops any written after it). Rank 0 only."""
        if self.work_dir is None or not self.is_main:
            return None
        write_json_atomic(self.work_dir / "config.json", self.run_config)  # (make_run_folder made the folder)
        lines = [json.dumps(row) + "\n" for row in self.metrics]
        tmp = self.work_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(lines))
        tmp.replace(self.work_dir / "metrics.jsonl")
        return open(self.work_dir / "metrics.jsonl", "a")

    def _save_checkpoint(self, best: bool = False) -> None:
        """Every rank takes part (its RNG states; its shards under FSDP); rank 0 writes."""
        if self.work_dir is None:
            return
        rng_states = distributed.gather(checkpoint.rng_state())
        weights, optimizer_state = (distributed.full_state(self.model, self.optimizer) if self._sharded
                                    else (None, None))

        def write() -> None:
            rng_json, rng_tensors = checkpoint.pack_rng_states(rng_states)
            state = {"lr": self.lr_at(self.iter_num), "val_loss": self.val_loss,
                     "best_val": self.best_val if math.isfinite(self.best_val) else None,
                     "train_seconds": self.train_seconds, "summary": self.summary, "rng": rng_json,
                     "grad_scaler": self.scaler.state_dict(), "run_config": self.run_config,
                     "metrics": self.metrics}
            tensors = {**rng_tensors, "data.generator": self.generator.get_state()}
            checkpoint.save(self.work_dir, self.model, self.iter_num, extra=state, optimizer=self.optimizer,
                            tensors=tensors, keep_last=self.config.keep_last, best=best, weights=weights,
                            optimizer_state=optimizer_state)

        distributed.run_together(write, main_only=True)  # a failed save (full disk) stops every rank

    def _checkpoint_to_resume(self) -> tuple[dict, Path]:
        """The latest checkpoint's metadata and folder, with a warning if the settings changed."""
        meta, folder = checkpoint.locate(self.work_dir)
        changed = _changed_keys(meta["run_config"], json.loads(json.dumps(self.run_config)))
        if changed and self.is_main:
            log.warning(f"resuming with changed settings ({', '.join(changed)}): the run will not "
                        f"match an uninterrupted one exactly")
        return meta, folder

    def _restore(self, meta: dict, folder: Path) -> None:
        """Continue exactly where the checkpoint in folder left off: optimizer, iteration, RNGs
        (each rank its own), data order, metrics. (run() has loaded the weights.)"""
        set_optimizer_state = (partial(distributed.load_full_optimizer_state, self.model, self.optimizer)
                               if self._sharded else None)
        tensors = checkpoint.load_state(folder, self.optimizer, set_optimizer_state)
        self.generator.set_state(tensors["data.generator"])
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
        self.summary = meta["summary"]
        self.metrics = meta["metrics"]  # metrics.jsonl is rewritten from these: rows after the
        # checkpoint (or a row cut short by a kill) are dropped, and the resumed run writes them anew
        log.info(f"resuming from {folder} (iteration {self.iter_num})")


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (resume flags aside)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b and key not in ("resume", "overwrite", "max_iters"):
            changed.append(f"{prefix}{key}")
    return changed


def check_run_folder(work_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse to start a new run over an old one by accident. Only reads (every rank checks);
    returns whether an old run is to be cleared (overwrite)."""
    holds_run = (work_dir / "config.json").exists() or (work_dir / checkpoint.LATEST_FILE).exists()
    if resume:
        if not (work_dir / checkpoint.LATEST_FILE).exists():
            raise FileNotFoundError(f"nothing to resume: {str(work_dir)!r} has no checkpoint; "
                                    f"start without --system.resume=true")
        return False
    if holds_run and not overwrite:
        raise FileExistsError(f"{str(work_dir)!r} already holds a run; continue it with "
                              f"--system.resume=true, start over with --system.overwrite=true, "
                              f"or choose another --system.work_dir")
    return holds_run


def make_run_folder(work_dir: Path, clear: bool) -> None:
    """Clear the old run if asked, and refuse an unwritable folder early (rank 0 only)."""
    if clear:
        for name in ("checkpoints", checkpoint.LATEST_FILE, checkpoint.BEST_FILE, "metrics.jsonl",
                     "summary.json", "loss.png"):
            target = work_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        probe = work_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write to {str(work_dir)!r} ({e.strerror}); choose another "
                              f"--system.work_dir") from None


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


def resolve_device(device: str) -> torch.device:
    """'auto' -> the best device present (cuda, then mps, then cpu); anything else as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # trainer.dtype -> autocast


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that trainer.dtype means on device; None is plain fp32. 'auto' is bf16
    on a CUDA card that has it, fp16 on older cards, and fp32 elsewhere: on a CPU without AMX
    (most), bf16 is several times slower than fp32."""
    if name != "auto":
        return DTYPES[name]
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def dtype_name(dtype: torch.dtype | None) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


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
    if c.dtype not in ("auto", *DTYPES):
        problems.append(f"trainer.dtype={c.dtype!r} must be one of 'auto', {', '.join(map(repr, DTYPES))}")
    if c.compile not in (None, True, False):
        problems.append(f"trainer.compile={c.compile!r} must be True, False or None (on CUDA only)")
    if c.eval_interval < 1 or c.log_interval < 1:
        problems.append("trainer.eval_interval and trainer.log_interval must be >= 1")
    if problems:
        raise ValueError("; ".join(problems))


def plot_losses(rows: list[dict], path: Path) -> None:
    """Draw training and validation loss against iteration into a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["iter"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
