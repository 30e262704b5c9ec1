"""Checkpoints: model weights in safetensors, everything else in JSON. Nothing is ever unpickled.

A run folder keeps its checkpoints under checkpoints/iter_NNNNNNN/ (model.safetensors +
checkpoint.json) and names the newest complete one in latest.json. Every file is written under a
temporary name and renamed into place, and latest.json moves only once the new checkpoint is whole,
so a crash at any moment leaves the previous checkpoint loadable.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_model, save_model

from mingpt.utils import write_json_atomic

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
LATEST_FILE = "latest.json"


def save(work_dir: str | Path, model: nn.Module, iter_num: int, extra: dict[str, Any] | None = None,
         keep_last: int = 1) -> Path:
    """Save model weights and metadata as checkpoints/iter_NNNNNNN in work_dir; return its path.

    The model's config (if it has a `config` with `to_dict`) is stored so that the model can be
    rebuilt; `extra` holds anything else JSON can carry (iteration, metrics, ...).
    """
    work_dir = Path(work_dir)
    final = work_dir / "checkpoints" / f"iter_{iter_num:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(_unwrap(model), str(tmp / WEIGHTS_FILE))
    config = getattr(_unwrap(model), "config", None)
    meta = {
        "format": FORMAT_VERSION,
        "iter_num": iter_num,
        "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
        **(extra or {}),
    }
    write_json_atomic(tmp / META_FILE, meta)
    _fsync(tmp / WEIGHTS_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_json_atomic(work_dir / LATEST_FILE, {"checkpoint": str(final.relative_to(work_dir))})
    _prune(work_dir / "checkpoints", keep_last)
    return final


def locate(path: str | Path) -> tuple[dict, Path]:
    """Find the checkpoint of a run folder (its latest) or a checkpoint folder.

    Returns (metadata, path of the weights file).
    """
    path = Path(path)
    if (path / LATEST_FILE).exists():
        path = path / json.loads((path / LATEST_FILE).read_text())["checkpoint"]
    meta_file, weights = path / META_FILE, path / WEIGHTS_FILE
    if not meta_file.exists() or not weights.exists():
        raise FileNotFoundError(f"{str(path)!r} holds no mingpt checkpoint ({META_FILE} and "
                                f"{WEIGHTS_FILE}); pass a run folder that finished training")
    meta = json.loads(meta_file.read_text())
    if meta.get("format", 0) > FORMAT_VERSION:
        raise ValueError(f"checkpoint {str(path)!r} has format {meta['format']}, newer than this "
                         f"mingpt understands ({FORMAT_VERSION}); upgrade mingpt")
    return meta, weights


def load_weights(model: nn.Module, weights: Path, device: str | torch.device = "cpu") -> None:
    """Load safetensors weights into model, requiring every parameter to match."""
    missing, unexpected = load_model(_unwrap(model), str(weights), strict=True, device=str(device))
    assert not missing and not unexpected  # strict=True raises first


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile or DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _prune(checkpoints: Path, keep_last: int) -> None:
    done = sorted(p for p in checkpoints.iterdir() if p.name.startswith("iter_") and not p.name.endswith(".tmp"))
    for old in done[:-keep_last]:
        shutil.rmtree(old)
