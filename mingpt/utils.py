"""Configuration and small helpers shared by every part of mingpt (it imports nothing of mingpt).

CfgNode holds a run's configuration as nested sections (system, model, trainer, data, ...) with
defaults in one place; the command line overrides them with `--section.key=value`. Every value's
type is fixed by its default, so a typo or a wrong type is refused with a message, not ignored.
Also: seeding, logging, the one way mingpt writes a file (atomic_path), and downloads.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn


class ConfigError(ValueError):
    """A user's configuration is wrong: the message says what and how to fix it."""


class CfgNode:
    """A lightweight configuration class inspired by yacs: attribute access, nested sections.

    >>> C = CfgNode(lr=1e-3, model=CfgNode(n_layer=4))
    >>> C.merge_from_args(['--model.n_layer=6', '--lr=3e-4'])
    >>> C.model.n_layer, C.lr
    (6, 0.0003)
    """

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __str__(self) -> str:
        return self._str_helper(0)

    def __repr__(self) -> str:
        return f"CfgNode({self.to_dict()!r})"

    def _str_helper(self, indent: int) -> str:
        lines = []
        for key, value in self.__dict__.items():
            if isinstance(value, CfgNode):
                lines.append(f"{key}:\n{value._str_helper(indent + 1)}")
            else:
                lines.append(f"{key}: {value!r}")
        return "\n".join("    " * indent + line for line in lines)

    def to_dict(self) -> dict:
        """A plain nested dict of the config (JSON-serialisable), e.g. for config.json."""
        return {k: v.to_dict() if isinstance(v, CfgNode) else v for k, v in self.__dict__.items()}

    def keys_flat(self, prefix: str = "") -> list[str]:
        """Every leaf key in dotted form: ['model.n_layer', 'trainer.max_iters', ...]."""
        out = []
        for key, value in self.__dict__.items():
            if isinstance(value, CfgNode):
                out.extend(value.keys_flat(f"{prefix}{key}."))
            else:
                out.append(f"{prefix}{key}")
        return out

    def merge_from_dict(self, d: dict, _prefix: str = "") -> None:
        """Overwrite values from a (nested) dict; unknown keys and wrong types are refused."""
        for key, value in d.items():
            dotted = f"{_prefix}{key}"
            if key not in self.__dict__:
                raise ConfigError(_unknown_key_message(dotted, self, _prefix))
            current = self.__dict__[key]
            if isinstance(current, CfgNode):
                if not isinstance(value, dict):
                    raise ConfigError(f"{dotted} is a section, not a value; set one of its keys, "
                                      f"e.g. --{current.keys_flat(dotted + '.')[0]}=...")
                current.merge_from_dict(value, dotted + ".")
            else:
                self.__dict__[key] = _checked_value(dotted, current, value)

    def merge_from_args(self, args: Iterable[str]) -> None:
        """Apply command-line overrides of the form `--section.key=value`.

        Values are parsed as Python literals (`3`, `1e-3`, `True`, `None`, `[1, 2]`, `'text'`);
        anything that does not parse is kept as a string, so `--data.input=notes.txt` works.
        """
        for arg in args:
            if not arg.startswith("--") or "=" not in arg:
                raise ConfigError(f"cannot parse argument {arg!r}: write overrides as "
                                  f"--section.key=value, e.g. --trainer.max_iters=2000")
            dotted, raw = arg[2:].split("=", 1)
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
            path = dotted.split(".")
            nested: dict = {}
            leaf = nested
            for key in path[:-1]:
                leaf = leaf.setdefault(key, {})
            leaf[path[-1]] = value
            self.merge_from_dict(nested)


def _unknown_key_message(dotted: str, node: CfgNode, prefix: str) -> str:
    valid = ", ".join(node.keys_flat(prefix))
    return f"unknown config key {dotted!r}; valid keys here are: {valid}"


def _checked_value(dotted: str, current: Any, value: Any) -> Any:
    """Return value if it fits the type of the default `current`, else raise ConfigError.

    A default of None accepts anything; an int is accepted (and converted) where a float is
    expected; a string default accepts only strings; a bool default accepts only booleans (and
    'true' / 'false', as the messages write them: --system.resume=true).
    """
    if current is None or value is None:
        return value
    expected = type(current)
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, (tuple, list)):
        if isinstance(value, (tuple, list)):
            return expected(value)
    elif isinstance(value, expected):
        return value
    raise ConfigError(f"{dotted} must be of type {expected.__name__} (default {current!r}), "
                      f"got {value!r} of type {type(value).__name__}")


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch so that a run can be repeated exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), where bf16 products are
    several times faster than fp32's; elsewhere PyTorch emulates them, several times slower."""
    probes = (getattr(torch.cpu, f"_is_{isa}_supported", None) for isa in ("avx512_bf16", "amx_tile"))
    return any(probe() for probe in probes if probe is not None)


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), before any process group."""
    return int(os.environ.get("RANK", 0))


def setup_logging(config: CfgNode | int = logging.INFO) -> None:
    """Send mingpt's log records to stderr as plain lines. Under torchrun only rank 0 logs below
    WARNING, so that every line is not printed once per process.

    Given a run's config instead of a log level (minGPT's `setup_logging(config)`), it also does
    minGPT's bookkeeping: it makes config.system.work_dir and writes the command line there as
    args.txt and the config as config.json.
    """
    level = config if isinstance(config, int) else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("mingpt")
    root.handlers[:] = [handler]
    root.setLevel(level if env_rank() == 0 else max(level, logging.WARNING))
    root.propagate = False
    if isinstance(config, CfgNode) and env_rank() == 0:
        work_dir = Path(config.system.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(work_dir / "args.txt", " ".join(sys.argv))
        write_json(work_dir / "config.json", config.to_dict())


# -- writing files ---------------------------------------------------------------------------------
@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Write a file (or a folder) at path so that nobody ever sees half of it.

        with atomic_path("out/weights.safetensors") as tmp:
            save_file(tensors, tmp)

    The caller writes to `tmp`, a name beside path; then it is flushed to disk (fsync), renamed
    to path in one step and the rename itself is flushed (fsync of the parent folder). If the
    block fails, the temporary file is removed and path is left as it was. A folder is renamed
    into place only if path does not exist yet (os.replace cannot replace a full folder).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    _remove(tmp)
    try:
        yield tmp
        for file in ([tmp] if tmp.is_file() else sorted(p for p in tmp.rglob("*") if p.is_file())):
            _fsync(file)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync(path.parent)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to path atomically (see atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: str | Path, obj: Any) -> None:
    """Write obj as indented JSON to path atomically."""
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# -- downloads ---------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where downloads are kept: $MINGPT_CACHE, else ~/.cache/mingpt."""
    return Path(os.environ.get("MINGPT_CACHE", Path.home() / ".cache" / "mingpt"))


def download(url: str, target: Path, what: str, fix: str, sha256: str | None = None,
             git_blob: str | None = None) -> Path:
    """Fetch url into target atomically, so a failed download leaves nothing.

    Offline (or on any network error) it raises ConnectionError naming `what` and `fix`; a file
    whose sha256, or git blob id (git_blob_id: what a repository's tree records for the file,
    so a file taken from a git repository can be checked against that tree), is not the
    expected one is refused.
    """
    logging.getLogger("mingpt").info(f"downloading {what} to {target}")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as e:
        raise ConnectionError(f"could not download {what} ({e}); {fix}") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"the downloaded {what} does not match its expected sha256; try again later")
    if git_blob is not None and git_blob_id(data) != git_blob:
        raise ValueError(f"the downloaded {what} is not the file its repository records (git blob "
                         f"{git_blob}); try again later, or pass a copy you trust")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, data)
    return target


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's contents: sha1 of b"blob <size>\\0" + data (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile or DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
