"""Token streams: text -> token ids -> (B, T) training batches.

A TokenStream is one long 1-D tensor of token ids. A batch is B windows of T + 1 tokens cut at
random offsets with a single indexing operation; x is each window without its last token, y without
its first, so y[b, t] is the token that follows x[b, :t+1]. No Python loop per example.
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from mingpt.data.char import CharTokenizer  # noqa: F401  (mingpt.data.CharTokenizer, as README shows)
from mingpt.utils import atomic_path, atomic_write, cache_dir, download, write_json


SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


class TokenStream:
    """Random (x, y) windows of block_size tokens from one long tensor of token ids.

    It is also a map-style Dataset (window i starts at token i), so code written for minGPT's
    per-example datasets still works; the Trainer prefers get_batch, which is much faster.
    """

    def __init__(self, tokens: torch.Tensor | np.ndarray, block_size: int) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        if len(tokens) < block_size + 1:
            raise ValueError(f"the text has {len(tokens)} tokens, fewer than block_size + 1 = "
                             f"{block_size + 1}; use a longer text or a smaller --model.block_size")
        # a numpy array (e.g. a memmap of a .bin file larger than RAM) stays as it is
        self.tokens = tokens.long() if isinstance(tokens, torch.Tensor) else tokens
        self.block_size = block_size
        self._window = torch.arange(block_size + 1)

    @classmethod
    def from_bin(cls, path: str | Path, dtype: str, block_size: int) -> "TokenStream":
        """A stream over a .bin file of token ids written by `mingpt prepare`, memory-mapped."""
        return cls(np.memmap(path, dtype=np.dtype(dtype), mode="r"), block_size)

    def __len__(self) -> int:
        return len(self.tokens) - self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(t[0] for t in self._cut(torch.tensor([i])))

    def get_batch(self, batch_size: int, generator: torch.Generator | None = None,
                  rows: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch: x, y of shape (batch_size, block_size). With rows, only those rows of it
        are cut (the others are drawn, not read): processes that share one generator each take
        their own part of the same batch."""
        starts = torch.randint(len(self), (batch_size,), generator=generator)
        return self._cut(starts if rows is None else starts[rows])

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
        index = starts[:, None] + self._window  # (B, block_size + 1)
        if isinstance(self.tokens, np.ndarray):  # one fancy-index read from the memmap
            windows = torch.from_numpy(self.tokens[index.numpy()].astype(np.int64))
        else:
            windows = self.tokens[index]
        return windows[:, :-1], windows[:, 1:]


class TokenShards(TokenStream):
    """A TokenStream over several .bin shards (`mingpt prepare --data.input=hf:...`), each
    memory-mapped: window i is the i-th of all shards' windows in order, and a window never
    crosses from one shard into the next (block_size starts per shard are lost, a trifle of a
    100M-token shard). One shard draws exactly the batches of TokenStream over it.

        shards of 100 and 50 tokens, block_size 10: windows 0..89 in the first, 90..129 in the second
    """

    def __init__(self, shards: list[np.ndarray], block_size: int) -> None:
        short = [i for i, s in enumerate(shards) if len(s) < block_size + 1]
        if not shards or short:
            raise ValueError(f"shard {short[0] if short else 0} has fewer than block_size + 1 = {block_size + 1} "
                             f"tokens; prepare with a larger --data.shard_tokens or use a smaller --model.block_size")
        self.shards, self.block_size = shards, block_size
        self._window = torch.arange(block_size + 1)
        # the first window of each shard, counted over all shards; the last entry is the total
        self._first = np.concatenate([[0], np.cumsum([len(s) - block_size for s in shards])])

    @classmethod
    def from_bins(cls, paths: list[Path], dtype: str, block_size: int) -> "TokenShards":
        return cls([np.memmap(p, dtype=np.dtype(dtype), mode="r") for p in paths], block_size)

    def __len__(self) -> int:
        return int(self._first[-1])

    def _cut(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        starts_np = starts.numpy()
        shard_of = np.searchsorted(self._first, starts_np, side="right") - 1
        windows = np.empty((len(starts_np), self.block_size + 1), dtype=np.int64)
        for shard in np.unique(shard_of):  # one fancy-index read per shard touched
            rows = shard_of == shard
            offsets = starts_np[rows] - self._first[shard]
            windows[rows] = self.shards[shard][offsets[:, None] + self._window.numpy()]
        windows = torch.from_numpy(windows)
        return windows[:, :-1], windows[:, 1:]


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, with a clear error when it is missing, empty or not text."""
    path = Path(path)
    try:
        return _read_checked(path, limit=None).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"input file {str(path)!r} is not valid UTF-8 (byte {e.start}); convert "
                         f"it to UTF-8 first") from None


def _read_checked(path: Path, limit: int | None) -> bytes:
    """The first `limit` bytes of a file (all of it for None), refusing a missing, binary or empty one."""
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist; pass an existing text "
                                f"file with --data.input=PATH")
    with open(path, "rb") as f:
        raw = f.read(limit if limit is not None else -1)
    if b"\x00" in raw:
        raise ValueError(f"input file {str(path)!r} looks binary (it holds NUL bytes); pass a "
                         f"UTF-8 text file")
    if not raw.strip():
        raise ValueError(f"input file {str(path)!r} is empty; pass a file with text in it")
    return raw


def builtin_corpus() -> str:
    """About 465 KB of English that every Python has offline: the language reference topics that
    pydoc shows (pydoc_data.topics), joined in a fixed order."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[key] for key in sorted(topics))


def tiny_shakespeare_path() -> Path:
    """The file of Tiny Shakespeare (1.1 MB), downloaded once into the cache folder."""
    path = cache_dir() / "tinyshakespeare.txt"
    if not path.exists():
        download(SHAKESPEARE_URL, path, "Tiny Shakespeare",
                 "connect to the internet, or save it yourself and pass --data.input=PATH")
    return path


def corpus_path(name_or_path: str) -> Path:
    """Like load_corpus, but the path of a file holding the text (the built-in corpus is written
    to the cache folder once), for jobs that stream files."""
    if name_or_path == "":
        path = cache_dir() / "pydoc_topics.txt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, builtin_corpus())
        return path
    if name_or_path == "shakespeare" and not Path(name_or_path).exists():
        return tiny_shakespeare_path()
    return Path(name_or_path)


def load_corpus(name_or_path: str) -> str:
    """'' -> the built-in corpus; 'shakespeare' -> Tiny Shakespeare; anything else: a file path."""
    if name_or_path == "":
        return builtin_corpus()
    if name_or_path == "shakespeare" and not Path(name_or_path).exists():
        return read_text(tiny_shakespeare_path())
    return read_text(name_or_path)


# -- preparing a corpus: text files -> train.bin / val.bin ------------------------------------------
def read_pieces(path: Path, piece_bytes: int = 1 << 20) -> Iterator[str]:
    """A text file in pieces of about piece_bytes, cut only just before a line that starts with a
    non-space character: GPT-2's split pattern never joins across such a cut, so encoding the
    pieces one by one gives exactly the ids of encoding the whole file."""
    check_text_file(path)
    buffer: list[str] = []
    size = 0
    with open(path, encoding="utf-8", newline="") as f:
        try:
            for line in f:
                if size >= piece_bytes and line[:1].strip():
                    yield "".join(buffer)
                    buffer, size = [], 0
                buffer.append(line)
                size += len(line)
        except UnicodeDecodeError:
            raise ValueError(f"input file {str(path)!r} is not valid UTF-8; convert it to UTF-8 first") from None
    if buffer:
        yield "".join(buffer)


def check_text_file(path: Path) -> None:
    """The checks of read_text on a file too large to read whole: its first 64 KiB."""
    _read_checked(path, limit=1 << 16)


def prepare_corpus(inputs: list[Path], out_dir: Path, tokenizer, val_fraction: float = 0.1) -> dict:
    """Encode text files into out_dir/train.bin and val.bin (uint16 ids where the vocabulary fits,
    else uint32) with meta.json and the tokenizer, streaming so a corpus larger than RAM works.

    Each file is one document, followed by <|endoftext|> where the tokenizer has it. The last
    val_fraction of every document (cut at a line) goes to validation. A failure midway (a bad
    file, Ctrl-C) leaves no token file behind: both are written atomically.
    """
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        files = {split: stack.enter_context(open(stack.enter_context(atomic_path(out_dir / f"{split}.bin")), "wb"))
                 for split in ("train", "val")}
        counts, text_tokens = _encode_documents(inputs, tokenizer, val_fraction, files, dtype)
        if min(text_tokens.values()) == 0:
            raise ValueError(f"the corpus is too small to give both a training and a validation split "
                             f"({counts['train']} / {counts['val']} tokens); add text or change "
                             f"--data.val_fraction")
    tokenizer.save(out_dir)
    meta = {"dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size,
            "train_tokens": counts["train"], "val_tokens": counts["val"],
            "sources": [str(p) for p in inputs]}
    write_json(out_dir / "meta.json", meta)
    return meta


def _encode_documents(inputs: list[Path], tokenizer, val_fraction: float, files: dict[str, BinaryIO],
                      dtype: type) -> tuple[dict[str, int], dict[str, int]]:
    """Stream each input file's ids into files["train"] and files["val"]; returns the tokens
    written to each, with and without the <|endoftext|> separators."""
    eot = getattr(tokenizer, "eot_token", None)
    counts = {"train": 0, "val": 0}
    text_tokens = dict(counts)
    with tqdm(total=sum(p.stat().st_size for p in inputs), unit="B", unit_scale=True, desc="encoding") as progress:
        for path in inputs:
            val_starts_at = path.stat().st_size * (1 - val_fraction)
            seen = 0
            for piece in read_pieces(path):
                size = len(piece.encode("utf-8"))
                cut = 0 if seen >= val_starts_at else len(piece)
                if seen < val_starts_at < seen + size:  # the split falls inside this piece
                    cut = piece.find("\n", int(len(piece) * (val_starts_at - seen) / size)) + 1 or len(piece)
                for split, text in (("train", piece[:cut]), ("val", piece[cut:])):
                    ids = tokenizer.encode(text)
                    np.asarray(ids, dtype=dtype).tofile(files[split])
                    counts[split] += len(ids)
                    text_tokens[split] += len(ids)
                seen += size
                progress.update(size)
            if eot is not None:
                split = "val" if seen >= val_starts_at else "train"
                np.asarray([eot], dtype=dtype).tofile(files[split])
                counts[split] += 1
    return counts, text_tokens


def check_val_fraction(val_fraction: float) -> None:
    """Refuse a validation share that leaves a split empty."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction} must be between 0 and 1")


def load_prepared(data_dir: Path, block_size: int) -> tuple[TokenStream, TokenStream, dict]:
    """The train and val streams of a folder made by prepare_corpus (train.bin, val.bin) or by
    shards.prepare_shards (meta.json lists its shards), memory-mapped, and its meta."""
    meta_file = data_dir / "meta.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{str(data_dir)!r} holds no meta.json; make it first with "
                                f"`mingpt prepare --data.out_dir={data_dir}`")
    meta = json.loads(meta_file.read_text())
    if "shards" in meta:  # a Hugging Face dataset's shards (data/shards.py)
        train, val = (TokenShards.from_bins([data_dir / name for name in meta["shards"][split]], meta["dtype"],
                                            block_size) for split in ("train", "val"))
        return train, val, meta
    train = TokenStream.from_bin(data_dir / "train.bin", meta["dtype"], block_size)
    val = TokenStream.from_bin(data_dir / "val.bin", meta["dtype"], block_size)
    return train, val, meta
