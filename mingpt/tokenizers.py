"""The kinds of tokenizer mingpt knows, in one place: making one, loading one, telling them apart.

    gpt2   OpenAI's GPT-2 BPE (bpe.py)            bpe    a byte-level BPE learnt on your text (bpe.py)
    char   one token per character (char.py)
Each saves itself as tokenizer.json (plus its ranks for a learnt BPE) in a data or run folder.
A pretrained model brings its own (for_pretrained): GPT-2 and GPT-Neo read GPT-2's BPE; GPT-1
has its own lower-cased BPE, which transformers reads from the model's vocab.json and merges.txt.
TextStream turns tokens into text as they are generated.
"""
from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Union

from mingpt import hf
from mingpt.bpe import BPETokenizer, train_bpe
from mingpt.char import CharTokenizer


class HFTokenizer:
    """A transformers tokenizer behind mingpt's interface (encode, decode, vocab_size, eot_token):
    for pretrained models whose tokenizer mingpt does not implement itself (GPT-1's)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.eot_token = tokenizer.eos_token_id  # GPT-1 has none: an empty prompt is refused

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        # no clean-up of spaces before punctuation: it would rewrite text already shown
        return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)


Tokenizer = Union[BPETokenizer, CharTokenizer, HFTokenizer]
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


def _openai_gpt(folder: Path) -> HFTokenizer:
    try:
        from transformers import OpenAIGPTTokenizer
    except ImportError:
        raise FileNotFoundError("GPT-1's tokenizer is read by the transformers package: "
                                "pip install transformers") from None
    return HFTokenizer(OpenAIGPTTokenizer.from_pretrained(str(folder)))


# a pretrained model's tokenizer (hf.tokenizer_of's kind) -> how to make it from the model's folder
PRETRAINED: dict[str, Callable[[Path | None], Tokenizer]] = {
    "gpt2": lambda folder: BPETokenizer(),  # GPT-2 and GPT-Neo: the same BPE, mingpt's own
    "openai-gpt": _openai_gpt,
}


def for_pretrained(name_or_path: str | Path) -> Tokenizer:
    """The tokenizer whose ids a pretrained model reads: a mingpt run folder's tokenizer.json, or
    for a Hugging Face folder or hub name the tokenizer of its family (config.json's model_type).

        for_pretrained("EleutherAI/gpt-neo-125m")  # GPT-2's BPE: nothing is downloaded
        for_pretrained("openai-gpt")               # GPT-1's: fetches vocab.json and merges.txt
    """
    path = Path(name_or_path)
    if (path / SPEC_FILE).is_file():
        return load(path)
    if not is_pretrained(name_or_path):
        raise FileNotFoundError(f"{str(name_or_path)!r} has no {SPEC_FILE} and is neither a Hugging "
                                f"Face folder (config.json) nor a hub name mingpt knows; pass a run "
                                f"folder, such a folder, or one of {', '.join(hf.HUB_MODELS)}")
    kind, folder = hf.tokenizer_of(name_or_path)
    return PRETRAINED[kind](folder)


def is_pretrained(name_or_path: str | Path) -> bool:
    """Whether name_or_path is a Hugging Face folder or a hub name mingpt knows."""
    path = Path(name_or_path)
    return hf.is_hf_folder(path) or (not path.exists() and str(name_or_path) in hf.HUB_MODELS)


def pretrained_kind(name_or_path: str | Path) -> str:
    """The tokenizer kind (a key of PRETRAINED) of a Hugging Face folder or hub name, without
    fetching anything: 'gpt2' for GPT-2 and GPT-Neo, 'openai-gpt' for GPT-1."""
    return hf.FAMILIES[hf.model_type(name_or_path)].TOKENIZER


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
