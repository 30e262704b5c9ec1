"""Checkpoints: tensors in safetensors, everything else in JSON. Nothing is ever unpickled.

A run folder keeps its checkpoints as checkpoints/iter_NNNNNNN/ holding
  model.safetensors   the model's weights, whole and fp32 (also of a run trained sharded or in bf16)
  state.safetensors   the optimizer's tensors and the torch RNG / data-sampler states (training only;
                      every rank's RNG states when several processes trained)
  checkpoint.json     model config, iteration, python/numpy RNG states, metrics, mingpt version
and names the newest complete one in latest.json (the best by validation loss in best.json).
A checkpoint is written into a temporary folder, fsync'ed, and renamed into place; only then does
latest.json move (itself by an atomic rename), and only then are old checkpoints pruned. A crash
at any moment therefore leaves the previous checkpoint complete and named by latest.json.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from mingpt.utils import write_json_atomic

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
META_FILE = "checkpoint.json"
LATEST_FILE = "latest.json"
BEST_FILE = "best.json"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message says why and what to do."""


def save(work_dir: str | Path, model: nn.Module, iter_num: int, extra: dict[str, Any] | None = None,
         optimizer: torch.optim.Optimizer | None = None, tensors: dict[str, torch.Tensor] | None = None,
         keep_last: int = 2, best: bool = False, weights: dict[str, torch.Tensor] | None = None,
         optimizer_state: dict | None = None) -> Path:
    """Save a checkpoint of model (and optimizer, extra tensors) at iter_num; return its folder.

    `extra` holds anything JSON can carry; `tensors` any further tensors (e.g. RNG states).
    With best=True, best.json names this checkpoint too, and pruning keeps it. A sharded model
    passes its gathered whole `weights` and `optimizer_state` (distributed.full_state), which are
    saved instead of model's and optimizer's own: the checkpoint is the same as unsharded.
    """
    work_dir = Path(work_dir)
    final = work_dir / "checkpoints" / f"iter_{iter_num:07d}"
    if not final.exists():  # (an existing one holds this very iteration: keep it, it is complete)
        tmp = final.with_name(final.name + ".tmp")
        try:
            _write(tmp, final, model, iter_num, extra, optimizer, tensors, weights, optimizer_state)
        except (OSError, SafetensorError) as e:  # e.g. a full disk: the previous one stays latest
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(f"could not save the checkpoint of iteration {iter_num} in "
                          f"{str(work_dir)!r} ({e}); the previous checkpoint is intact: free some "
                          f"space and rerun with --system.resume=true") from None
    pointer = {"checkpoint": str(final.relative_to(work_dir))}
    write_json_atomic(work_dir / LATEST_FILE, pointer)
    if best:
        write_json_atomic(work_dir / BEST_FILE, pointer)
    _prune(work_dir, keep_last)
    return final


def _write(tmp: Path, final: Path, model: nn.Module, iter_num: int, extra: dict[str, Any] | None,
           optimizer: torch.optim.Optimizer | None, tensors: dict[str, torch.Tensor] | None,
           weights: dict[str, torch.Tensor] | None, optimizer_state: dict | None) -> None:
    """Write a checkpoint into tmp, flush it to disk, and rename it to final."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if weights is None:
        save_model(_unwrap(model), str(tmp / WEIGHTS_FILE))
    else:
        save_file(_without_tied_copies(weights, model), str(tmp / WEIGHTS_FILE))
    state_tensors = dict(tensors or {})
    optimizer_meta = None
    if optimizer is not None:
        sd = optimizer_state if optimizer_state is not None else optimizer.state_dict()
        optimizer_meta, optimizer_tensors = _flatten_optimizer(sd)
        state_tensors.update(optimizer_tensors)
    if state_tensors:
        save_file(state_tensors, str(tmp / STATE_FILE))
    config = getattr(_unwrap(model), "config", None)
    meta = {
        "format": FORMAT_VERSION,
        "mingpt_version": _version(),
        "iter_num": iter_num,
        "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
        "optimizer": optimizer_meta,
        **(extra or {}),
    }
    write_json_atomic(tmp / META_FILE, meta)
    for name in (WEIGHTS_FILE, STATE_FILE):
        if (tmp / name).exists():
            _fsync(tmp / name)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def locate(path: str | Path, which: str = LATEST_FILE) -> tuple[dict, Path]:
    """Find the checkpoint of a run folder (its latest, or best with which=BEST_FILE) or a
    checkpoint folder. Returns (metadata, checkpoint folder)."""
    path = Path(path)
    if (path / which).exists():
        path = path / _read_json(path / which)["checkpoint"]
    meta_file, weights = path / META_FILE, path / WEIGHTS_FILE
    if not meta_file.exists() or not weights.exists():
        raise FileNotFoundError(f"{str(path)!r} holds no mingpt checkpoint ({META_FILE} and "
                                f"{WEIGHTS_FILE}); pass a run folder that has saved one")
    meta = _read_json(meta_file)
    if meta.get("format", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {meta['format']}, newer than this "
                              f"mingpt understands ({FORMAT_VERSION}); upgrade mingpt")
    return meta, path


def load_weights(model: nn.Module, folder: Path, device: str | torch.device = "cpu") -> None:
    """Load a checkpoint's weights into model; a file of another shape or kind is refused."""
    weights = folder / WEIGHTS_FILE
    refuse_pickle(weights)
    try:
        load_model(_unwrap(model), str(weights), strict=True, device=str(device))
    except SafetensorError as e:
        raise CheckpointError(f"{str(weights)!r} is truncated or corrupt ({e}); resume from an "
                              f"earlier checkpoint or retrain") from None
    except RuntimeError as e:  # missing/unexpected keys or shape mismatch
        raise CheckpointError(f"{str(weights)!r} does not fit this model ({str(e).splitlines()[0]}); "
                              f"it was saved from a different architecture or vocabulary") from None


def load_state(folder: Path, optimizer: torch.optim.Optimizer | None = None,
               set_optimizer_state: Callable[[dict], None] | None = None) -> dict[str, torch.Tensor]:
    """Restore the optimizer from a checkpoint folder; return its other tensors (RNG states...).

    set_optimizer_state hands the optimizer its state dict where optimizer.load_state_dict cannot
    (a sharded model: distributed.load_full_optimizer_state)."""
    path = folder / STATE_FILE
    refuse_pickle(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, FileNotFoundError) as e:
        raise CheckpointError(f"{str(path)!r} is missing, truncated or corrupt ({e}); resume from "
                              f"an earlier checkpoint") from None
    if optimizer is not None:
        meta = _read_json(folder / META_FILE)["optimizer"]
        state = {int(i): {name: tensors.pop(f"optimizer.{i}.{name}") for name in names}
                 for i, names in meta["state"].items()}
        groups = meta["param_groups"]
        if len(groups) != len(optimizer.param_groups) or any(
                len(g["params"]) != len(o["params"]) for g, o in zip(groups, optimizer.param_groups)):
            raise CheckpointError(f"the optimizer state in {str(folder)!r} is for another model; "
                                  f"resume with the same configuration")
        (set_optimizer_state or optimizer.load_state_dict)({"state": state, "param_groups": groups})
    return tensors


def refuse_pickle(path: Path) -> None:
    """Refuse a pickle or torch.save file posing as a checkpoint, before anything reads it.

    A pickle can run any code when loaded. A safetensors file starts with its JSON header's
    length (8 bytes, little-endian) and then the header itself, '{...'.
    """
    if not path.exists():
        return
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        return
    if head[:1] == b"\x80" or head[:2] == b"PK":  # pickle protocol 2+, or torch.save's zip
        raise CheckpointError(f"{str(path)!r} is a pickle / torch.save file, which can run code when "
                              f"loaded; mingpt loads only safetensors. Convert it where you trust it")
    raise CheckpointError(f"{str(path)!r} is not a safetensors file (truncated or corrupt); resume "
                          f"from an earlier checkpoint or retrain")


# -- RNG states: saved so that a resumed run draws exactly the numbers it would have drawn -------
def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of the python, numpy and torch random number generators."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    json_part = {"python": [version, list(mt), gauss],
                 "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return json_part, tensors


def pack_rng_states(states: list[tuple[dict[str, Any], dict[str, torch.Tensor]]]
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Every rank's rng_state() in one (JSON part, tensor part): rank 0's under the names one
    process uses, rank r's JSON under "rank{r}" and its tensors prefixed "rank{r}."."""
    json_part, tensors = dict(states[0][0]), dict(states[0][1])
    for rank, (json_r, tensors_r) in enumerate(states[1:], start=1):
        json_part[f"rank{rank}"] = json_r
        tensors.update({f"rank{rank}.{name}": t for name, t in tensors_r.items()})
    return json_part, tensors


def unpack_rng_state(json_part: dict[str, Any], tensors: dict[str, torch.Tensor], rank: int
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Rank `rank`'s part of pack_rng_states' output, for set_rng_state (None if the run that
    saved it had no such rank)."""
    if rank == 0:
        return json_part, tensors
    if f"rank{rank}" not in json_part:
        return None
    prefix = f"rank{rank}."
    return json_part[f"rank{rank}"], {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}


def set_rng_state(json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, mt, gauss = json_part["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = json_part["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# -- helpers -------------------------------------------------------------------------------------
def _flatten_optimizer(sd: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """An optimizer's state_dict as (JSON metadata, flat tensors named optimizer.<param>.<name>)."""
    tensors, names = {}, {}
    for i, entries in sd["state"].items():
        names[str(i)] = sorted(entries)
        for name, value in entries.items():
            tensors[f"optimizer.{i}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return {"state": names, "param_groups": sd["param_groups"]}, tensors


def _without_tied_copies(weights: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict with one name per parameter that model shares under several names (GPT's tied
    embedding and head): the name save_model keeps, the first in sorted order, so that both ways
    of saving write the same file."""
    names_of: dict[int, list[str]] = {}
    for name, p in _unwrap(model).named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    copies = {name for names in names_of.values() for name in sorted(names)[1:]}
    return {name: t.contiguous() for name, t in weights.items() if name not in copies}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is truncated or corrupt ({e}); resume from an earlier "
                              f"checkpoint or retrain") from None


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile or DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def _version() -> str:
    from mingpt import __version__
    return __version__


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(work_dir: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last checkpoints, never the one best.json names."""
    keep = set()
    for pointer in (LATEST_FILE, BEST_FILE):
        if (work_dir / pointer).exists():
            keep.add(Path(_read_json(work_dir / pointer)["checkpoint"]).name)
    folder = work_dir / "checkpoints"
    done = sorted(p for p in folder.iterdir() if p.name.startswith("iter_") and not p.name.endswith(".tmp"))
    keep.update(p.name for p in done[-max(keep_last, 1):])
    for old in done:
        if old.name not in keep:
            shutil.rmtree(old)
