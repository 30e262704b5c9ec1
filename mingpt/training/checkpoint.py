"""One checkpoint: tensors in safetensors, everything else in JSON. Nothing is ever unpickled.

A checkpoint is a folder (run_folder.py keeps them as checkpoints/iter_NNNNNNN/ and names the
newest in latest.json) holding
  model.safetensors   the model's weights, whole and fp32 (also of a run trained sharded or in bf16)
  state.safetensors   the optimizer's tensors and the torch RNG / data-sampler states (training only;
                      every rank's RNG states when several processes trained)
  checkpoint.json     model config, iteration, python/numpy RNG states, metrics, mingpt version
It is written into a temporary folder, flushed to disk and renamed into place (utils.atomic_path),
so a crash at any moment leaves either the whole checkpoint or none.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from mingpt.utils import atomic_path, unwrap

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
META_FILE = "checkpoint.json"
INTACT_FIX = "name an intact checkpoint (--system.checkpoint=iter_N) or retrain"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message says why and what to do."""


def write(folder: Path, model: nn.Module, iter_num: int, extra: dict[str, Any] | None = None,
          optimizer: torch.optim.Optimizer | None = None, tensors: dict[str, torch.Tensor] | None = None,
          weights: dict[str, torch.Tensor] | None = None, optimizer_state: dict | None = None) -> None:
    """Write a checkpoint of model (and optimizer, extra tensors) at iter_num into folder, atomically.

    `extra` holds anything JSON can carry; `tensors` any further tensors (e.g. RNG states).
    A sharded model passes its gathered whole `weights` and `optimizer_state`
    (distributed.full_state), which are saved instead of model's and optimizer's own: the
    checkpoint is the same as unsharded.
    """
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        if weights is None:
            save_model(unwrap(model), str(tmp / WEIGHTS_FILE))
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
        config = getattr(unwrap(model), "config", None)
        (tmp / META_FILE).write_text(json.dumps({
            "format": FORMAT_VERSION,
            "mingpt_version": _version(),
            "iter_num": iter_num,
            "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
            "optimizer": optimizer_meta,
            **(extra or {}),
        }, indent=2))


def read_meta(folder: Path) -> dict:
    """A checkpoint folder's checkpoint.json, refusing a missing, corrupt or newer one."""
    if not (folder / META_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{str(folder)!r} holds no mingpt checkpoint ({META_FILE} and "
                                f"{WEIGHTS_FILE}); pass a run folder that has saved one")
    meta = _read_json(folder / META_FILE)
    if meta.get("format", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(folder)!r} has format {meta['format']}, newer than this "
                              f"mingpt understands ({FORMAT_VERSION}); upgrade mingpt")
    return meta


def verify(folder: Path) -> dict:
    """Check that a checkpoint is whole without loading it: its JSON parses, and each safetensors
    file is one (not a pickle) whose header fits the file's length, which a truncated file's does
    not. Returns its metadata; raises CheckpointError or FileNotFoundError naming the problem."""
    meta = read_meta(folder)
    for path in (folder / WEIGHTS_FILE, folder / STATE_FILE):
        if path.name == STATE_FILE and not path.exists():  # (saved without training state)
            continue
        refuse_pickle(path)
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{str(path)!r} is truncated or corrupt ({e}); {INTACT_FIX}") from None
    return meta


def load_weights(model: nn.Module, folder: Path, device: str | torch.device = "cpu") -> None:
    """Load a checkpoint's weights into model; a file of another shape or kind is refused."""
    weights = folder / WEIGHTS_FILE
    refuse_pickle(weights)
    try:
        load_model(unwrap(model), str(weights), strict=True, device=str(device))
    except SafetensorError as e:
        raise CheckpointError(f"{str(weights)!r} is truncated or corrupt ({e}); {INTACT_FIX}") from None
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
        raise CheckpointError(f"{str(path)!r} is missing, truncated or corrupt ({e}); {INTACT_FIX}") from None
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
    raise CheckpointError(f"{str(path)!r} is not a safetensors file (truncated or corrupt); {INTACT_FIX}")


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


def restore_rng_state(json_part: dict[str, Any], tensors: dict[str, torch.Tensor], rank: int) -> None:
    """Set rank `rank`'s RNG states from a checkpoint's (pack_rng_states'); a rank the run that
    saved it did not have gets a warning and keeps its own (its dropout starts afresh)."""
    rng = unpack_rng_state(json_part, tensors, rank)
    if rng is None:
        log.warning(f"the checkpoint holds no RNG state for rank {rank} (it was saved by fewer processes): "
                    f"this rank's dropout starts afresh")
    else:
        set_rng_state(*rng)


def set_rng_state(json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, mt, gauss = json_part["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = json_part["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# -- resuming: a run keeps its model and optimizer ------------------------------------------------
# model keys a resumed run may change: a preset's name (the values it stands for are compared one by
# one) and dropout, which changes how the model trains, not what its weights are
MODEL_KEYS_FREE_ON_RESUME = ("model_type", "embd_pdrop", "resid_pdrop", "attn_pdrop")
# parameter-group keys that the loop sets every iteration (the schedule: lr, Muon's momentum), or that
# say how this device computes the update: they may differ from the checkpoint's
GROUP_KEYS_FREE_ON_RESUME = ("params", "param_names", "lr", "initial_lr", "momentum", "foreach", "fused",
                             "capturable", "differentiable")
# run-config keys that may change without a warning: resume flags, the length of the run, its
# stopping conditions and its trackers
RUN_KEYS_FREE_ON_RESUME = ("resume", "overwrite", "max_iters", "checkpoint", "target_val_loss", "max_seconds",
                           "log_to")
_NEW_RUN = "or start a new run (another --system.work_dir, or --system.overwrite=true)"


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested run configs (RUN_KEYS_FREE_ON_RESUME
    aside): a resumed run with any of them will not match an uninterrupted one exactly."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b and key not in RUN_KEYS_FREE_ON_RESUME:
            changed.append(f"{prefix}{key}")
    return changed


def check_resume(meta: dict, folder: Path, model: nn.Module, run_config: dict, warn: bool = True) -> None:
    """Before a run resumes from the checkpoint in folder: refuse another model (check_same_model),
    and warn (if warn) of the settings that changed (changed_keys)."""
    check_same_model(meta.get("model_config"), model, folder)
    changed = changed_keys(meta["run_config"], json.loads(json.dumps(run_config)))
    if changed and warn:
        log.warning(f"resuming with changed settings ({', '.join(changed)}): the run will not "
                    f"match an uninterrupted one exactly")


def check_same_model(saved: dict | None, model: nn.Module, folder: Path) -> None:
    """Refuse to resume the checkpoint in folder, whose model config is `saved`, into a model
    configured otherwise (other parts, pattern, window, dims, ...): its weights would not fit, or
    would fit parts they were not trained for, and the run would mix two models. Names the first
    differing key with both values. Keys the checkpoint predates and MODEL_KEYS_FREE_ON_RESUME
    are not compared, nor anything for a model without a config."""
    config = getattr(unwrap(model), "config", None)
    if saved is None or not hasattr(config, "to_dict"):
        return
    current = json.loads(json.dumps(config.to_dict()))  # (tuples as the lists the checkpoint holds)
    for key, value in current.items():
        if key in saved and key not in MODEL_KEYS_FREE_ON_RESUME and saved[key] != value:
            raise ValueError(f"cannot resume {folder.name} with model.{key}={value!r}: it was trained with "
                             f"model.{key}={saved[key]!r}, and a run keeps its model; resume with that, "
                             f"{_NEW_RUN}")


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer's class, or an OptimizerSet's members' in order: 'AdamW', 'Muon+AdamW'."""
    return "+".join(type(o).__name__ for o in getattr(optimizer, "optimizers", [optimizer]))


def check_same_optimizer(meta: dict, optimizer: torch.optim.Optimizer, config: Any, folder: Path) -> None:
    """Refuse to resume the checkpoint in folder (metadata `meta`) with another optimizer, before
    its state is loaded: another kind keeps other state, and load_state_dict restores the
    parameter groups, so a setting kept there (betas, weight_decay, lr_mult, ...) that differs
    from the checkpoint's would be silently replaced by it. Names the first difference with both
    values (as trainer.<key> where the trainer's config has that key); what the loop sets every
    iteration may differ (GROUP_KEYS_FREE_ON_RESUME)."""
    kind, saved_kind = optimizer_kind(optimizer), meta.get("optimizer_kind")
    if saved_kind is not None and kind != saved_kind:
        raise ValueError(f"cannot resume {folder.name} with the optimizer {kind}: it was trained with "
                         f"{saved_kind}; resume with that, {_NEW_RUN}")
    saved_groups = (meta.get("optimizer") or {}).get("param_groups")
    if saved_groups is None:
        return
    groups = json.loads(json.dumps([{k: v for k, v in g.items() if k not in GROUP_KEYS_FREE_ON_RESUME}
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
    for name, p in unwrap(model).named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    copies = {name for names in names_of.values() for name in sorted(names)[1:]}
    return {name: t.contiguous() for name, t in weights.items() if name not in copies}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is truncated or corrupt ({e}); {INTACT_FIX}") from None


def _version() -> str:
    try:
        return importlib.metadata.version("mingpt")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
