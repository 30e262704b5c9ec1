"""Token streams: text -> token ids -> (B, T) training batches.

A TokenStream is one long 1-D tensor of token ids. A batch is B windows of T + 1 tokens cut at
random offsets with a single indexing operation; x is each window without its last token, y without
its first, so y[b, t] is the token that follows x[b, :t+1]. No Python loop per example.
"""
from __future__ import annotations

import json
import logging
import os
import urllib.request
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger(__name__)

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


class TokenStream:
    """Random (x, y) windows of block_size tokens from one long tensor of token ids.

    It is also a map-style Dataset (window i starts at token i), so code written for minGPT's
    per-example datasets still works; the Trainer prefers get_batch, which is much faster.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int) -> None:
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
        if len(tokens) < block_size + 1:
            raise ValueError(f"the text has {len(tokens)} tokens, fewer than block_size + 1 = "
                             f"{block_size + 1}; use a longer text or a smaller --model.block_size")
        self.tokens = tokens.long()
        self.block_size = block_size
        self._window = torch.arange(block_size + 1)

    def __len__(self) -> int:
        return len(self.tokens) - self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.tokens[i:i + self.block_size + 1]
        return chunk[:-1], chunk[1:]

    def get_batch(self, batch_size: int, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch: x, y of shape (batch_size, block_size)."""
        starts = torch.randint(len(self), (batch_size,), generator=generator)
        return self._cut(starts)

    def eval_batches(self, batch_size: int, max_batches: int | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed batches for evaluation: windows spread evenly over the whole stream (the same
        windows every time, so successive evaluations are comparable)."""
        n_windows = len(self) // self.block_size  # as many as fit without overlap
        if max_batches is not None:
            n_windows = min(n_windows, max_batches * batch_size)
        starts = torch.linspace(0, len(self) - 1, max(n_windows, 1)).long()
        for i in range(0, len(starts), batch_size):
            yield self._cut(starts[i:i + batch_size])

    def _cut(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        windows = self.tokens[starts[:, None] + self._window]  # (B, block_size + 1)
        return windows[:, :-1], windows[:, 1:]


class CharTokenizer:
    """Each distinct character of a text is one token: 'hello' -> [3, 2, 4, 4, 5]."""

    def __init__(self, chars: list[str]) -> None:
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            shown = "".join(unknown[:20])
            raise ValueError(f"{len(unknown)} character(s) are not in this model's vocabulary: "
                             f"{shown!r}; use only characters of the training text")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        spec = json.loads(Path(path).read_text())
        if spec.get("type") != "char":
            raise ValueError(f"{path} describes a {spec.get('type')!r} tokenizer, not 'char'")
        return cls(spec["chars"])


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, with a clear error when it is missing, empty or not text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist; pass an existing text "
                                f"file with --data.input=PATH")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise ValueError(f"input file {str(path)!r} looks binary (it holds NUL bytes); pass a "
                         f"UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"input file {str(path)!r} is not valid UTF-8 (byte {e.start}); convert "
                         f"it to UTF-8 first") from None
    if not text.strip():
        raise ValueError(f"input file {str(path)!r} is empty; pass a file with text in it")
    return text


def builtin_corpus() -> str:
    """About 465 KB of English that every Python has offline: the language reference topics that
    pydoc shows (pydoc_data.topics), joined in a fixed order."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[key] for key in sorted(topics))


def cache_dir() -> Path:
    """Where downloads are kept: $MINGPT_CACHE, else ~/.cache/mingpt."""
    return Path(os.environ.get("MINGPT_CACHE", Path.home() / ".cache" / "mingpt"))


def tiny_shakespeare() -> str:
    """Tiny Shakespeare (1.1 MB), downloaded once into the cache folder."""
    path = cache_dir() / "tinyshakespeare.txt"
    if not path.exists():
        log.info(f"downloading Tiny Shakespeare to {path}")
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as response:
                data = response.read()
        except OSError as e:
            raise ConnectionError(f"could not download Tiny Shakespeare ({e}); connect to the "
                                  f"internet, or save it yourself and pass --data.input=PATH") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return read_text(path)


def load_corpus(name_or_path: str) -> str:
    """'' -> the built-in corpus; 'shakespeare' -> Tiny Shakespeare; anything else: a file path."""
    if name_or_path == "":
        return builtin_corpus()
    if name_or_path == "shakespeare" and not Path(name_or_path).exists():
        return tiny_shakespeare()
    return read_text(name_or_path)
