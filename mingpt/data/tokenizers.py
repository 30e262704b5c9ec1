"""The kinds of tokenizer mingpt knows, in one place: making one, loading one, telling them apart.

    gpt2   OpenAI's GPT-2 BPE (bpe.py)            bpe    a byte-level BPE learnt on your text (bpe.py)
    char   one token per character (char.py)
Each saves itself as tokenizer.json (plus its ranks for a learnt BPE) in a data or run folder.
(A pretrained model brings its own: formats/pretrained.py's tokenizer_for.) TextStream turns
tokens into text as they are generated.
"""
from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Protocol

from mingpt.bpe import BPETokenizer, train_bpe
from mingpt.data.char import CharTokenizer


class Tokenizer(Protocol):
    """What mingpt asks of a tokenizer: BPETokenizer, CharTokenizer, or a pretrained model's own
    (formats/pretrained.py). One that starts documents with a token also has eot_token."""
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


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
        ids = tokenizer.encode(prompt)
    elif getattr(tokenizer, "eot_token", None) is not None:
        ids = [tokenizer.eot_token]
    elif isinstance(tokenizer, CharTokenizer) and "\n" not in tokenizer.stoi:
        ids = [0]
    else:
        ids = tokenizer.encode("\n")
    if not ids:  # GPT-1's tokenizer has no end-of-text token and drops whitespace
        raise ValueError(f"the prompt {prompt!r} is no tokens for this tokenizer, and it has no "
                         f"token that starts a document; pass a prompt with a word in it, "
                         f"e.g. --prompt=\"the\"")
    return ids


class TextStream:
    """The text of generated tokens, piece by piece as they come, so that the pieces add up to the
    decoded whole: stream = TextStream(tokenizer, prompt_ids); stream.add([id]) -> new text.

    A byte-level BPE token can end inside a multi-byte character, so its bytes go through an
    incremental UTF-8 decoder. Other tokenizers decode all tokens so far and hand out what is new:
    GPT-1's "hello</w>" + "world</w>" is "hello world", its space known only when "world" comes.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.by_bytes = hasattr(tokenizer, "decode_bytes")
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids = list(prompt_ids)
        self.shown = "" if self.by_bytes else tokenizer.decode(self.ids)

    def add(self, ids: list[int]) -> str:
        """The text that these next tokens add."""
        if self.by_bytes:
            return self.utf8.decode(self.tokenizer.decode_bytes(ids))
        self.ids += ids
        text = self.tokenizer.decode(self.ids)
        same = len(os.path.commonprefix([text, self.shown]))  # (all of shown, for these tokenizers)
        piece, self.shown = text[same:], text
        return piece

    def end(self) -> str:
        """What is left at the end: a character left incomplete by the last bytes."""
        return self.utf8.decode(b"", final=True) if self.by_bytes else ""
