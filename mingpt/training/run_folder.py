"""A run folder: every file a training run writes, by name, and the one place that reads them.

    out/chargpt/
      config.json      the full resolved config of the run
      metrics.jsonl    one JSON object per logged step (iter, loss, lr, ms, tokens_per_s, ...)
      summary.json     the final figures (iters, wall_s, tokens_per_s, best val_loss, ...)
      loss.png         the loss curves
      tokenizer.json   the tokenizer the run's tokens came from (jobs save it)
      checkpoints/iter_NNNNNNN/   checkpoints (checkpoint.py), the newest few and the best
      latest.json, best.json      which checkpoint is the newest, and the best by val loss
Every file is written atomically (utils.atomic_path). Loading takes the newest intact checkpoint,
skipping damaged ones with a warning, or the one named.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import IO, Any, Sequence

import torch.nn as nn
from safetensors import SafetensorError

from mingpt import distributed
from mingpt.training import checkpoint
from mingpt.training.checkpoint import CheckpointError
from mingpt.utils import atomic_path, write_json

log = logging.getLogger(__name__)


class RunFolder:
    """The files of one run in `path`. Only the process that writes (rank 0) calls the writers."""

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    PLOT = "loss.png"
    TOKENIZER = "tokenizer.json"
    CHECKPOINTS = "checkpoints"
    LATEST = "latest.json"
    BEST = "best.json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.prepared = False  # (prepare() has run: the folder is checked and exists)
        self._metrics: IO[str] | None = None
        # copies of the metrics rows for viewing (tracking.py: TensorBoard, W&B), given by the Trainer
        # when asked; they get every row append_metrics writes and are closed with the metrics
        self.trackers: list = []

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- starting a run ---------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run has started here (it writes metrics.jsonl first, then checkpoints)."""
        return (self.path / self.METRICS).exists() or (self.path / self.LATEST).exists()

    def holds_checkpoint(self) -> bool:
        return (self.path / self.LATEST).exists() or bool(self.checkpoint_names())

    def prepare(self, resume: bool = False, overwrite: bool = False) -> None:
        """Make the folder ready for a run, refusing to start a new run over an old one by
        accident: resume continues the run here, overwrite clears it first. Every rank checks (so
        all refuse alike); rank 0 alone clears and creates, and refuses an unwritable folder."""
        def check() -> None:
            if resume and not self.holds_checkpoint():
                raise FileNotFoundError(f"nothing to resume: {str(self.path)!r} has no checkpoint; "
                                        f"start without --system.resume=true")
            if not resume and self.holds_run() and not overwrite:
                raise FileExistsError(f"{str(self.path)!r} already holds a run; continue it with "
                                      f"--system.resume=true, start over with --system.overwrite=true, "
                                      f"or choose another --system.work_dir")

        def create() -> None:
            if overwrite and not resume:
                for name in (self.CHECKPOINTS, self.LATEST, self.BEST, self.METRICS, self.SUMMARY, self.PLOT):
                    target = self.path / name
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                probe = self.path / ".write_test"
                probe.write_text("")
                probe.unlink()
            except OSError as e:
                raise PermissionError(f"cannot write to {str(self.path)!r} ({e.strerror}); choose another "
                                      f"--system.work_dir") from None

        distributed.run_together(check)
        distributed.run_together(create, main_only=True)
        self.prepared = True

    # -- config, metrics, summary, plot, tokenizer -------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_json(self.path / self.CONFIG, config)

    def start_metrics(self, rows: list[dict]) -> None:
        """Begin metrics.jsonl with rows (a resumed run's rows up to its checkpoint: any written
        after it, or cut short by a kill, are dropped) and keep it open for append_metrics."""
        with atomic_path(self.path / self.METRICS) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        self._metrics = open(self.path / self.METRICS, "a")

    def append_metrics(self, row: dict) -> None:
        assert self._metrics is not None, "start_metrics first"
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        for tracker in self.trackers:
            tracker.log(row)

    def close_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()

    def read_metrics(self) -> list[dict]:
        return [json.loads(line) for line in (self.path / self.METRICS).read_text().splitlines() if line]

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / self.SUMMARY, summary)

    def plot(self, rows: list[dict], scores: Sequence[str] = ()) -> None:
        """Draw loss.png: training and validation loss against iteration, and the metrics that
        `scores` names (a task's accuracies, between 0 and 1) on a second axis at the right."""
        # a Figure of its own, drawn by the Agg canvas: no pyplot, so no global figure state and no
        # GUI backend to import
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        train = [(r["iter"], r["loss"]) for r in rows if "loss" in r]
        val = [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r]
        if train:
            ax.plot(*zip(*train), label="train loss", linewidth=1)
        if val:
            ax.plot(*zip(*val), "o-", label="val loss")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if scores:
            right = ax.twinx()
            for key, style in zip(scores, ("s--", "^--", "v--", "d--")):
                points = [(r["iter"], r[key]) for r in rows if key in r]
                if points:
                    right.plot(*zip(*points), style, label=key, alpha=0.8)
            right.set_ylabel("score")
            more = right.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels)
        fig.tight_layout()
        with atomic_path(self.path / self.PLOT) as tmp:
            fig.savefig(tmp, dpi=100, format="png")

    def save_tokenizer(self, tokenizer: Any) -> None:
        """Keep the run's tokenizer (anything with save(folder)), for sampling later."""
        tokenizer.save(self.path)

    # -- checkpoints --------------------------------------------------------------------------------
    def save_checkpoint(self, model: nn.Module, iter_num: int, keep_last: int = 2, best: bool = False,
                        **state: Any) -> Path:
        """Save a checkpoint of iteration iter_num (state: checkpoint.write's optimizer, extra,
        tensors, weights, optimizer_state), point latest.json (and with best, best.json) at it,
        then delete all but the newest keep_last and the best. Returns its folder."""
        folder = self.path / self.CHECKPOINTS / f"iter_{iter_num:07d}"
        if not folder.exists():  # (an existing one holds this very iteration: keep it, it is whole)
            try:
                folder.parent.mkdir(parents=True, exist_ok=True)
                checkpoint.write(folder, model, iter_num, **state)
            except (OSError, SafetensorError) as e:  # e.g. a full disk: the previous one stays latest
                raise OSError(f"could not save the checkpoint of iteration {iter_num} in "
                              f"{str(self.path)!r} ({e}); the previous checkpoint is intact: free some "
                              f"space and rerun with --system.resume=true") from None
        pointer = {"checkpoint": str(folder.relative_to(self.path))}
        write_json(self.path / self.LATEST, pointer)
        if best:
            write_json(self.path / self.BEST, pointer)
        self._prune(keep_last)
        return folder

    def checkpoint_names(self) -> list[str]:
        """The folder names of the complete checkpoints here, newest first."""
        folder = self.path / self.CHECKPOINTS
        if not folder.is_dir():
            return []
        return sorted((p.name for p in folder.iterdir() if p.name.startswith("iter_")
                       and not p.name.endswith(".tmp")), reverse=True)

    def find_checkpoint(self, name: str | None = None) -> tuple[dict, Path]:
        """(metadata, folder) of a checkpoint: the one named ('latest', 'best' or a folder name
        such as 'iter_0002000'), or by default the newest intact one. A damaged checkpoint is
        skipped with a warning naming it, down to the oldest one kept; a named one is not."""
        if name is not None:
            folder = self._named(name)
            return checkpoint.verify(folder), folder
        candidates, problems = [], []
        if (self.path / self.LATEST).exists():
            try:
                candidates.append(self._pointed(self.LATEST))
            except CheckpointError as e:
                problems.append((self.path / self.LATEST, e))
        candidates += [self.path / self.CHECKPOINTS / n for n in self.checkpoint_names()]
        if not candidates and not problems:
            raise FileNotFoundError(f"{str(self.path)!r} holds no mingpt checkpoint; pass a run "
                                    f"folder that has saved one")
        for folder in dict.fromkeys(candidates):  # (in order, without repeats)
            try:
                meta = checkpoint.verify(folder)
            except (CheckpointError, FileNotFoundError) as e:
                problems.append((folder, e))
                continue
            for skipped, why in problems:
                log.warning(f"skipped the damaged {skipped.name} ({why}); using {folder.name}")
            return meta, folder
        raise problems[0][1]

    def _named(self, name: str) -> Path:
        if name in ("latest", "best"):
            pointer = self.LATEST if name == "latest" else self.BEST
            if not (self.path / pointer).exists():
                raise FileNotFoundError(f"{str(self.path)!r} has no {pointer}; name a checkpoint of "
                                        f"{', '.join(self.checkpoint_names()) or 'none'}")
            return self._pointed(pointer)
        folder = self.path / self.CHECKPOINTS / name
        if not folder.is_dir():
            raise FileNotFoundError(f"no checkpoint {name!r} in {str(self.path)!r}; choose one of "
                                    f"latest, best, {', '.join(self.checkpoint_names()) or '(none saved)'}")
        return folder

    def _pointed(self, pointer: str) -> Path:
        try:
            return self.path / json.loads((self.path / pointer).read_text())["checkpoint"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as e:
            raise CheckpointError(f"{str(self.path / pointer)!r} is truncated or corrupt ({e}); "
                                  f"{checkpoint.INTACT_FIX}") from None

    def _prune(self, keep_last: int) -> None:
        """Delete all but the newest keep_last checkpoints, never the ones latest.json and
        best.json name."""
        keep = {self._pointed(p).name for p in (self.LATEST, self.BEST) if (self.path / p).exists()}
        names = self.checkpoint_names()
        keep.update(names[:max(keep_last, 1)])
        for name in names:
            if name not in keep:
                shutil.rmtree(self.path / self.CHECKPOINTS / name)
