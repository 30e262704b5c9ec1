"""Configuration and small helpers shared by every part of mingpt.

CfgNode holds a run's configuration as nested sections (system, model, trainer, data, ...) with
defaults in one place; the command line overrides them with `--section.key=value`. Every value's
type is fixed by its default, so a typo or a wrong type is refused with a message, not ignored.
"""
from __future__ import annotations

import ast
import ctypes
import hashlib
import json
import logging
import os
import random
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from mingpt.distributed import env_rank


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


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    A training step frees and re-allocates the same large activation buffers every iteration.
    By default glibc gives blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) back
    to the kernel, which must then fault in and zero every page again on the next step: about
    30,000 page faults per step at 6 layers x 384 dims. Pinning the threshold at 32 MiB and never
    trimming the heap keeps them (benchmarks/RESULTS.md has the effect). The process keeps its
    peak memory until it exits, as it would with jemalloc or tcmalloc. Linux/glibc only; returns
    whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**30))


def setup_logging(level: int = logging.INFO) -> None:
    """Send mingpt's log records to stderr as plain lines (the CLI calls this once). Under
    torchrun only rank 0 logs below WARNING, so that every line is not printed once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("mingpt")
    root.handlers[:] = [handler]
    root.setLevel(level if env_rank() == 0 else max(level, logging.WARNING))
    root.propagate = False


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write obj as JSON to path via a temporary file and a rename, so readers never see half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cache_dir() -> Path:
    """Where downloads are kept: $MINGPT_CACHE, else ~/.cache/mingpt."""
    return Path(os.environ.get("MINGPT_CACHE", Path.home() / ".cache" / "mingpt"))


def download(url: str, target: Path, what: str, fix: str, sha256: str | None = None) -> Path:
    """Fetch url into target through a temporary name, so a failed download leaves nothing.

    Offline (or on any network error) it raises ConnectionError naming `what` and `fix`; a file
    whose sha256 is not the expected one is refused.
    """
    logging.getLogger("mingpt").info(f"downloading {what} to {target}")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as e:
        raise ConnectionError(f"could not download {what} ({e}); {fix}") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"the downloaded {what} does not match its expected sha256; try again later")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target
