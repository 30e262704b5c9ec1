"""Configuration and small helpers shared by every part of mingpt (it imports nothing of mingpt).

CfgNode holds a run's configuration as nested sections (system, model, trainer, data, ...) with
defaults in one place; the command line overrides them with `--section.key=value`. Every value's
type is fixed by its default, and a key may declare more next to its default (a Setting: its
choices, or its range), so a typo, a wrong type or an impossible value is refused with a message,
not ignored. Also: seeding, logging, the one way mingpt writes a file (atomic_path), and downloads.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn


class ConfigError(ValueError):
    """A user's configuration is wrong: the message says what and how to fix it."""


@dataclass(frozen=True)
class Setting:
    """A config key's default and what else it may hold, declared where the default is:

        CfgNode(batch_size=Setting(64, min=1), dtype=Setting("auto", choices=("auto", "fp32", "bf16")),
                max_iters=Setting(None, kind=int, min=0))       # None (the default) or a whole number >= 0

    choices: the values it may take. min / max: a closed range; above / below: an open one (a
    float must also be finite). None is allowed where the default is None or `optional` says so.
    kind: the type when the default is None (else the default's type; an int passes for a float).
    """
    default: Any
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    optional: bool = False
    kind: type | None = None

    def problem(self, dotted: str, value: Any) -> str | None:
        """What is wrong with `value` for the key `dotted`, or None if nothing is."""
        if value is None:
            if self.default is None or self.optional:
                return None
            return f"{dotted}=None is not allowed; it must be {self.describe(typed=True)} (default {self.default!r})"
        if self.choices is not None:
            fits = any(value == c and type(value) is type(c) for c in self.choices)
            return None if fits else f"{dotted}={value!r} must be {self.describe()}"
        if not _fits(self.kind or type(self.default), value):
            return f"{dotted}={value!r} must be {self.describe(typed=True)}"
        in_range = (self.min is None or value >= self.min) and (self.above is None or value > self.above) \
            and (self.max is None or value <= self.max) and (self.below is None or value < self.below)
        return None if in_range else f"{dotted}={value!r} must be {self.describe()}"

    def describe(self, typed: bool = False) -> str:
        """The values allowed, in words: "one of 'a', 'b'", ">= 1", "in [0, 1)", "between 0 and 1";
        typed: with the type ("a whole number >= 1"); and ", or None" where None is allowed."""
        if self.choices is not None:
            words = "one of " + ", ".join(map(repr, self.choices))
        else:
            words = self._range()
            if typed or not words:
                kind = self.kind or type(self.default)
                words = f"{_KIND_WORDS.get(kind, 'a ' + kind.__name__)} {words}".strip()
        return words + (", or None" if self.default is None or self.optional else "")

    def _range(self) -> str:
        low = (self.min, "[", ">=") if self.min is not None else (self.above, "(", ">") if self.above is not None else None
        high = (self.max, "]", "<=") if self.max is not None else (self.below, ")", "<") if self.below is not None else None
        if low and high:
            closed = low[1] == "[" and high[1] == "]"
            return f"between {low[0]} and {high[0]}" if closed else f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
        bound = low or high
        return f"{bound[2]} {bound[0]}" if bound else ""


_KIND_WORDS = {int: "a whole number", float: "a finite number"}


def _fits(kind: type, value: Any) -> bool:
    """Whether value is of kind, as a config key of that type may hold it: an int for a float,
    a list for a tuple; a float must be finite."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (tuple, list):
        return isinstance(value, (tuple, list))
    return isinstance(value, kind)


class CfgNode:
    """A lightweight configuration class inspired by yacs: attribute access, nested sections.

    >>> C = CfgNode(lr=1e-3, model=CfgNode(n_layer=4))
    >>> C.merge_from_args(['--model.n_layer=6', '--lr=3e-4'])
    >>> C.model.n_layer, C.lr
    (6, 0.0003)

    A value given as a Setting declares what the key may hold; check() refuses what it may not,
    and what the node's cross-key checks (also_check) refuse, all problems in one message.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(_settings={}, _kinds={}, _checks=[])
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        """A new key records its type (and its Setting); a known one takes the value as it is."""
        if key not in self.__dict__:
            if isinstance(value, Setting):
                self._settings[key] = value
                value = value.default
            if value is not None and not isinstance(value, CfgNode):
                self._kinds[key] = type(value)
        self.__dict__[key] = value

    def _items(self) -> list[tuple[str, Any]]:
        """The keys and values (not the node's own bookkeeping, whose names start with _)."""
        return [(k, v) for k, v in self.__dict__.items() if not k.startswith("_")]

    def __str__(self) -> str:
        return self._str_helper(0)

    def __repr__(self) -> str:
        return f"CfgNode({self.to_dict()!r})"

    def _str_helper(self, indent: int) -> str:
        lines = []
        for key, value in self._items():
            if isinstance(value, CfgNode):
                lines.append(f"{key}:\n{value._str_helper(indent + 1)}")
            else:
                lines.append(f"{key}: {value!r}")
        return "\n".join("    " * indent + line for line in lines)

    def to_dict(self) -> dict:
        """A plain nested dict of the config (JSON-serialisable), e.g. for config.json."""
        return {k: v.to_dict() if isinstance(v, CfgNode) else v for k, v in self._items()}

    def keys_flat(self, prefix: str = "") -> list[str]:
        """Every leaf key in dotted form: ['model.n_layer', 'trainer.max_iters', ...]."""
        out = []
        for key, value in self._items():
            if isinstance(value, CfgNode):
                out.extend(value.keys_flat(f"{prefix}{key}."))
            else:
                out.append(f"{prefix}{key}")
        return out

    def setting(self, key: str) -> Setting | None:
        """What key declares beyond its type (None: its type only)."""
        return self._settings.get(key)

    def also_check(self, check: Callable[["CfgNode", str], list[str]]) -> "CfgNode":
        """Add a check of several keys together, check(node, prefix) -> problems (a module-level
        function, so that the node can still be copied and pickled); returns the node."""
        self._checks.append(check)
        return self

    def problems(self, prefix: str = "") -> list[str]:
        """Everything wrong with this node's values and its sections', each as one sentence."""
        found = []
        for key, value in self._items():
            dotted = f"{prefix}{key}"
            if isinstance(value, CfgNode):
                found += value.problems(dotted + ".")
            elif key in self._settings:
                found.append(self._settings[key].problem(dotted, value))
            elif value is not None and key in self._kinds and not _fits(self._kinds[key], value):
                found.append(f"{dotted}={value!r} must be of type {self._kinds[key].__name__}")
        found = [problem for problem in found if problem]
        if not found:  # (a cross-key check may assume that every key holds a value of its kind)
            for check in self._checks:
                found += check(self, prefix)
        return found

    def check(self, prefix: str = "") -> None:
        """Raise ConfigError naming every problem (problems()), or do nothing."""
        found = self.problems(prefix)
        if found:
            raise ConfigError("; ".join(found))

    def merge_from_dict(self, d: dict, _prefix: str = "") -> None:
        """Overwrite values from a (nested) dict; unknown keys and wrong types are refused."""
        for key, value in d.items():
            dotted = f"{_prefix}{key}"
            if key.startswith("_") or key not in self.__dict__:
                raise ConfigError(_unknown_key_message(dotted, self, _prefix))
            current = self.__dict__[key]
            if isinstance(current, CfgNode):
                if not isinstance(value, dict):
                    raise ConfigError(f"{dotted} is a section, not a value; set one of its keys, "
                                      f"e.g. --{current.keys_flat(dotted + '.')[0]}=...")
                current.merge_from_dict(value, dotted + ".")
            else:
                kind = self._kinds.get(key) or getattr(self._settings.get(key), "kind", None)
                self.__dict__[key] = value if kind is None or value is None else _checked_value(dotted, kind, value)

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


# keys that were renamed: the message for the old name says what to write now
RENAMED = {"lr_decay": "lr_decay=True is now lr_schedule='cosine' (or 'wsd'); lr_decay=False is "
                       "lr_schedule='constant'"}


def _unknown_key_message(dotted: str, node: CfgNode, prefix: str) -> str:
    leaf = dotted.rsplit(".", 1)[-1]
    if leaf in RENAMED:
        return f"unknown config key {dotted!r}: {RENAMED[leaf]}"
    valid = ", ".join(node.keys_flat(prefix))
    return f"unknown config key {dotted!r}; valid keys here are: {valid}"


def _checked_value(dotted: str, expected: type, value: Any) -> Any:
    """Return value if it fits the key's type (its default's), else raise ConfigError: an int is
    accepted (and converted) where a float is expected, a list where a tuple is; a bool key also
    takes 'true' / 'false', as the messages write them (--system.resume=true)."""
    if expected is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if _fits(expected, value) or (expected is float and isinstance(value, float)):
        return float(value) if expected is float else expected(value) if expected in (tuple, list) else value
    raise ConfigError(f"{dotted} must be of type {expected.__name__}, got {value!r} of type {type(value).__name__}")


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
