"""The kinds of tokenizer mingpt knows, in one place: making one, loading one, telling them apart.

    gpt2   OpenAI's GPT-2 BPE (bpe.py)            bpe    a byte-level BPE learnt on your text (bpe.py)
    char   one token per character (char.py)
Each saves itself as tokenizer.json (plus its ranks for a learnt BPE) in a data or run folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Union

from mingpt.bpe import BPETokenizer, train_bpe
from mingpt.char import CharTokenizer

Tokenizer = Union[BPETokenizer, CharTokenizer]
SPEC_FILE = "tokenizer.json"


def _char(texts: Iterable[str], vocab_size: int) -> CharTokenizer:
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    return CharTokenizer(sorted(chars))


# kind -> how to make one from the training texts (a learnt BPE of vocab_size tokens)
KINDS: dict[str, Callable[[Iterable[str], int], Tokenizer]] = {
    "gpt2": lambda texts, vocab_size: BPETokenizer(),
    "bpe": lambda texts, vocab_size: train_bpe(texts, vocab_size, name=f"bpe-{vocab_size}"),
    "char": _char,
}


def make(kind: str, texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """A tokenizer of this kind for texts (read only by the kinds that learn from them)."""
    if kind not in KINDS:
        raise ValueError(f"tokenizer.kind={kind!r} must be one of {', '.join(map(repr, KINDS))}")
    return KINDS[kind](texts, vocab_size)


def spec(folder: str | Path) -> dict:
    """The tokenizer.json of a data or run folder."""
    path = Path(folder) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{str(folder)!r} has no {SPEC_FILE}; pass a run folder or a "
                                f"folder made by `mingpt prepare`")
    return json.loads(path.read_text())


def load(folder: str | Path) -> Tokenizer:
    """The tokenizer that folder/tokenizer.json describes."""
    kind = spec(folder).get("type")
    if kind == "char":
        return CharTokenizer.load(folder)
    if kind == "bpe":
        return BPETokenizer.load(folder)
    raise ValueError(f"{Path(folder) / SPEC_FILE} names an unknown tokenizer type {kind!r}")


def is_gpt2(tokenizer_spec: dict) -> bool:
    """Whether a tokenizer.json is OpenAI's GPT-2 BPE (what GPT-2's weights understand)."""
    return tokenizer_spec.get("type") == "bpe" and tokenizer_spec.get("name") == "gpt2"


def start_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts a new document (<|endoftext|>, or a newline)."""
    if prompt:
        return tokenizer.encode(prompt)
    if getattr(tokenizer, "eot_token", None) is not None:
        return [tokenizer.eot_token]
    if isinstance(tokenizer, CharTokenizer) and "\n" not in tokenizer.stoi:
        return [0]
    return tokenizer.encode("\n")
