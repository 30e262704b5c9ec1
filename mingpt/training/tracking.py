"""Run tracking: the rows of metrics.jsonl sent on, as they are written, to TensorBoard or Weights &
Biases (`--trainer.log_to=tensorboard,wandb`).

The run folder stays the source of truth: a tracker gets exactly the rows metrics.jsonl gets
(RunFolder.append_metrics hands each on), each number under its own name at step row["iter"].
Each tracker is an optional extra, imported only when a run asks for it:

    tensorboard  torch.utils.tensorboard's SummaryWriter -> RUN/tensorboard/   (pip install "mingpt[tensorboard]")
    wandb        wandb.init(dir=RUN) -> RUN/wandb/; WANDB_MODE=offline needs no account  (pip install "mingpt[wandb]")
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any, Protocol

# tracker name -> (the module it needs, the extra that installs it)
NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class Tracker(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def names(log_to: str | list | tuple | None) -> list[str]:
    """trainer.log_to as a list of tracker names: None or '' -> [], 'tensorboard,wandb' or
    ['tensorboard', 'wandb'] -> both. An unknown name, or one whose package is missing, is
    refused in one line naming the fix."""
    if not log_to:
        return []
    items = log_to.split(",") if isinstance(log_to, str) else list(log_to)
    chosen = [str(item).strip().lower() for item in items if str(item).strip()]
    for name in chosen:
        if name not in NEEDS:
            raise ValueError(f"trainer.log_to={log_to!r}: unknown tracker {name!r}; choose from "
                             f"{', '.join(NEEDS)} (comma-separated), or None")
        module, extra = NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise FileNotFoundError(f"trainer.log_to={name} needs the {module} package: "
                                    f'pip install "mingpt[{extra}]"')
    return list(dict.fromkeys(chosen))  # (each once, in the order given)


def open_trackers(log_to: str | list | tuple | None, run_dir: Path, config: dict) -> list[Tracker]:
    """The trackers trainer.log_to names, writing beside the run folder's own files."""
    kinds = {"tensorboard": TensorBoard, "wandb": WandB}
    return [kinds[name](run_dir, config) for name in names(log_to)]


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The row's numeric values but its step (iter): what a tracker can plot."""
    return {key: float(value) for key, value in row.items()
            if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


class TensorBoard:
    """Scalars into RUN/tensorboard/ (`tensorboard --logdir RUN/tensorboard`); the config as text."""

    def __init__(self, run_dir: Path, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=2, default=str)}\n```")

    def log(self, row: dict[str, Any]) -> None:
        for key, value in numbers(row).items():
            self.writer.add_scalar(key, value, global_step=row["iter"])

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A W&B run in RUN/wandb/, named after the run folder, with the run's config. The project
    and the mode come from W&B's own variables (WANDB_PROJECT, default 'mingpt'; WANDB_MODE=offline
    writes the run to disk only, for `wandb sync` later). A resumed mingpt run is a new W&B run."""

    def __init__(self, run_dir: Path, config: dict) -> None:
        import os

        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mingpt"), dir=str(run_dir),
                              name=Path(run_dir).resolve().name, config=config)

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(numbers(row), step=row["iter"])

    def close(self) -> None:
        self.run.finish()
