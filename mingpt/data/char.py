"""The character tokenizer: each distinct character of a text is one token."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mingpt.utils import atomic_write


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

    def save(self, folder: str | Path) -> None:
        """Write folder/tokenizer.json."""
        spec = {"type": "char", "chars": self.chars}
        atomic_write(Path(folder) / "tokenizer.json", json.dumps(spec, ensure_ascii=False))

    @classmethod
    def load(cls, folder: str | Path) -> "CharTokenizer":
        path = Path(folder) / "tokenizer.json"
        spec = json.loads(path.read_text())
        if spec.get("type") != "char":
            raise ValueError(f"{path} describes a {spec.get('type')!r} tokenizer, not 'char'")
        return cls(spec["chars"])
