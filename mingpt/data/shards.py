"""A Hugging Face dataset -> fixed-size token shards, for corpora too large to hold: FineWeb-Edu.

    mingpt prepare --data.input=hf:HuggingFaceFW/fineweb-edu --data.subset=sample-10BT

The documents stream in through the `datasets` library (nothing is downloaded beyond the
parquet shard being read), several processes tokenize batches of them (the order is kept), and
the ids fill shards of exactly shard_tokens tokens, each document followed by <|endoftext|>:

    doc 0 <eot> doc 1 <eot> ...  ->  val_000000.bin | train_000001.bin | train_000002.bin | ...
The first shard is the validation split, as in llm.c's and nanoGPT's fineweb.py; a document may
run on from one shard into the next. Each shard is written atomically and then recorded in
progress.json (which document the next shard starts in, how many of its tokens are already
written, and a place in the stream shortly before it), so a preparation stopped anywhere resumes
with the same command, reading on from that place and redoing no finished shard. meta.json, written last, is what `mingpt train --data.dir` reads.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from mingpt.utils import atomic_path, write_json

log = logging.getLogger(__name__)

PREFIX = "hf:"  # --data.input=hf:NAME: a dataset of the hub, or a local folder / file of one
PROGRESS_FILE = "progress.json"
# a local file's suffix -> the `datasets` builder that reads it
LOCAL_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "text"}
INSTALL = 'pip install "mingpt[data]"'


@dataclass(frozen=True)
class Source:
    """Which documents: a hub name or local path, its subset (config) and split, the text column."""
    name: str
    subset: str | None = None
    split: str = "train"
    text_key: str = "text"


def is_hf_input(data_input: str) -> bool:
    return data_input.startswith(PREFIX)


def parse_input(data_input: str, subset: str | None, split: str, text_key: str) -> Source:
    """--data.input=hf:NAME (with --data.subset/split/text_key) as a Source."""
    name = data_input[len(PREFIX):].strip()
    if not name:
        raise ValueError(f"data.input={data_input!r} names no dataset; write hf:NAME, e.g. "
                         f"--data.input=hf:HuggingFaceFW/fineweb-edu --data.subset=sample-10BT")
    return Source(name, subset or None, split, text_key)


# -- reading documents through `datasets` ------------------------------------------------------------
def open_documents(source: Source) -> "Documents":
    """The documents of source, as a stream. A hub dataset streams (streaming=True); a local folder
    of data files, or one parquet / jsonl / csv / txt file, is read by `datasets` the same way.
    Offline, a hub name fails in one line."""
    try:
        import datasets
    except ImportError:
        raise FileNotFoundError(f"reading {PREFIX}{source.name} needs the `datasets` package: {INSTALL}") from None
    path = Path(source.name).expanduser()
    try:
        if path.is_file():
            builder = LOCAL_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ValueError(f"{str(path)!r} is not a file `datasets` reads by its name; pass a "
                                 f"{', '.join(LOCAL_BUILDERS)} file or a folder of them")
            dataset = datasets.load_dataset(builder, data_files=str(path), split=source.split, streaming=True)
        else:
            dataset = datasets.load_dataset(str(path) if path.is_dir() else source.name, name=source.subset,
                                            split=source.split, streaming=True)
    except ConnectionError as e:  # (datasets' own ConnectionError is the builtin's)
        raise ConnectionError(f"cannot reach the Hugging Face hub for {source.name!r} ({e}); connect to the "
                              f"internet (and unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), or pass a local "
                              f"copy: --data.input=hf:FOLDER") from None
    except ValueError as e:  # an unknown subset or split: datasets names the valid ones
        raise ValueError(f"{PREFIX}{source.name}: {e}") from None
    columns = dataset.column_names
    if columns is not None and source.text_key not in columns:
        raise ValueError(f"{PREFIX}{source.name} has no column {source.text_key!r} (it has "
                         f"{', '.join(columns)}); name the text column with --data.text_key=NAME")
    splits = getattr(dataset.info, "splits", None) or {}
    total = splits[source.split].num_examples if source.split in splits else None
    return Documents(dataset, source, total)


class Documents:
    """The texts of a streamed `datasets` dataset, with places to start reading again.

    Every `every` documents it notes where the stream is (`datasets`' state_dict: a file and a row
    in it), so that a preparation resumed at document D starts reading at the last place noted
    before D and reads on to D without tokenizing, instead of reading every document from the
    first again (hours for FineWeb-Edu's later shards over a network)."""

    def __init__(self, dataset: Any, source: Source, total: int | None, every: int = 64, kept: int = 256) -> None:
        self.dataset, self.source, self.total, self.every = dataset, source, total, every
        self.places: deque = deque(maxlen=kept)  # (documents before it, the state there), newest last

    def read(self, start: int, place: dict | None = None) -> Iterator[str]:
        """The texts from document `start` on; from `place` ({"documents": i, "state": ...}, i <= start,
        noted by an earlier run) if given and the dataset can load it, else from the first."""
        dataset, at = self.dataset, 0
        if place is not None and hasattr(dataset, "load_state_dict"):
            dataset.load_state_dict(place["state"])
            at = place["documents"]
        noting = hasattr(dataset, "state_dict")
        rows = iter(dataset)
        try:
            for _ in range(start - at):  # (documents whose tokens are in finished shards)
                next(rows)
            index = start
            while True:
                if noting and index % self.every == 0:  # (the state before document `index` is read)
                    self.places.append((index, json.loads(json.dumps(dataset.state_dict()))))
                row = next(rows, None)
                if row is None:
                    return
                yield row[self.source.text_key]
                index += 1
        except ConnectionError as e:
            raise ConnectionError(f"lost the connection while reading {self.source.name!r} ({e}); run the same "
                                  f"command again: it resumes after the last finished shard") from None

    def place_before(self, document: int) -> dict | None:
        """The newest place noted at or before `document` (None if there is none left)."""
        for index, state in reversed(self.places):
            if index <= document:
                return {"documents": index, "state": state}
        return None


# -- tokenizing in several processes, in order ---------------------------------------------------------
_worker_tokenizer: Any = None  # a Pool worker's one piece of state: set once by _start_worker


def _start_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return encode_documents(_worker_tokenizer, texts)


def encode_documents(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ids of texts, each followed by <|endoftext|>, as one uint32 array, and each document's
    length in tokens (its <|endoftext|> included)."""
    ids = tokenizer.encode_batch(texts)  # (as ordinary text: an "<|endoftext|>" inside a page is text)
    lengths = np.fromiter((len(d) + 1 for d in ids), dtype=np.int64, count=len(ids))
    tokens = np.empty(int(lengths.sum()), dtype=np.uint32)
    ends = np.cumsum(lengths)
    for doc, end in zip(ids, ends):
        tokens[end - len(doc) - 1:end - 1] = doc
        tokens[end - 1] = tokenizer.eot_token
    return tokens, lengths


def encoded_batches(texts: Iterable[str], tokenizer: Any, processes: int, batch_documents: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """encode_documents over batches of batch_documents texts, in their order, by `processes`
    worker processes (1: in this process). At most 2 batches per worker are in flight, so a
    stream larger than memory is read only as fast as it is tokenized."""
    batches = _batched(texts, batch_documents)
    if processes == 1:
        yield from (encode_documents(tokenizer, batch) for batch in batches)
        return
    with multiprocessing.Pool(processes, initializer=_start_worker, initargs=(tokenizer,)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_in_worker, (batch,)))
            if len(pending) >= 2 * processes:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- the shards and their progress file -----------------------------------------------------------------
@dataclass
class Progress:
    """progress.json: the settings, the finished shards, and where the next shard starts: in
    document `documents` (counted from the first), whose first `skip_tokens` tokens are written."""
    settings: dict
    shards: list[dict]  # {"file": "train_000001.bin", "tokens": N}
    documents: int = 0
    skip_tokens: int = 0
    place: dict | None = None  # where reading may start again: Documents.place_before(documents)
    done: bool = False

    def save(self, out_dir: Path) -> None:
        write_json(out_dir / PROGRESS_FILE, asdict(self))


def shard_name(index: int) -> str:
    """val_000000.bin for the first shard, train_00000N.bin for the others."""
    return f"{'val' if index == 0 else 'train'}_{index:06d}.bin"


def prepare_shards(source: Source, out_dir: Path, tokenizer: Any, shard_tokens: int = 100_000_000,
                   processes: int = 1, batch_documents: int = 64) -> dict:
    """Stream source's documents into out_dir's shards (module docstring), resuming a preparation
    of the same settings that stopped half-way; returns meta.json's contents. Refuses a folder
    prepared with other settings, and a dataset too small for a validation and a training shard."""
    if shard_tokens < 1 or processes < 1 or batch_documents < 1:
        raise ValueError(f"data.shard_tokens={shard_tokens} and data.processes={processes} must be >= 1")
    eot = getattr(tokenizer, "eot_token", None)
    if eot is None or not hasattr(tokenizer, "encode_batch"):
        raise ValueError("a Hugging Face dataset is tokenized with a BPE that has <|endoftext|> "
                         "(--tokenizer.kind=gpt2)")
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    settings = {"source": asdict(source), "shard_tokens": shard_tokens, "dtype": dtype.name,
                "tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__), "vocab_size": tokenizer.vocab_size}
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = _progress_to_resume(out_dir, settings)
    if progress.done:
        log.info(f"{out_dir} is prepared already ({len(progress.shards)} shards)")
        return json.loads((out_dir / "meta.json").read_text())
    documents = open_documents(source)
    if progress.shards:
        log.info(f"resuming in {out_dir}: {len(progress.shards)} shards done, going on from document "
                 f"{progress.documents:,}")

    buffer, fill = np.empty(shard_tokens, dtype=dtype), 0
    first_doc = progress.documents  # the index of the first document of the current batch
    skip = progress.skip_tokens  # tokens of the first document that an earlier run wrote
    bar = tqdm(total=documents.total, initial=first_doc, unit="doc", unit_scale=True, desc="tokenizing", dynamic_ncols=True)
    try:
        texts = documents.read(first_doc, progress.place)
        for tokens, lengths in encoded_batches(texts, tokenizer, processes, batch_documents):
            position, skip = skip, 0
            while position < len(tokens):
                take = min(shard_tokens - fill, len(tokens) - position)
                buffer[fill:fill + take] = tokens[position:position + take]
                fill, position = fill + take, position + take
                if fill == shard_tokens:  # the next shard starts at `position` of this batch
                    ends = np.cumsum(lengths)
                    whole = int(np.searchsorted(ends, position, side="right"))  # documents before it
                    progress.documents = first_doc + whole
                    progress.skip_tokens = position - (int(ends[whole - 1]) if whole else 0)
                    progress.place = documents.place_before(progress.documents)
                    _finish_shard(out_dir, progress, buffer)
                    fill = 0
                    bar.set_postfix(shards=len(progress.shards), refresh=False)
            first_doc += len(lengths)
            bar.update(len(lengths))
    finally:
        bar.close()
    if len(progress.shards) + (fill > 0) < 2:
        raise ValueError(f"{PREFIX}{source.name} gave fewer than 2 shards of {shard_tokens:,} tokens, too few for a "
                         f"validation and a training shard; lower --data.shard_tokens (and remove "
                         f"{str(out_dir)!r} if it holds a shard)")
    if fill:
        progress.documents, progress.skip_tokens, progress.place = first_doc, 0, None
        _finish_shard(out_dir, progress, buffer[:fill])
    tokenizer.save(out_dir)
    return _finish_preparation(out_dir, progress, source, tokenizer, dtype, documents=first_doc)


def _finish_preparation(out_dir: Path, progress: Progress, source: Source, tokenizer: Any, dtype: np.dtype,
                        documents: int) -> dict:
    """Write meta.json (what the shards hold, for the loader) and mark the preparation done."""
    counts = {split: sum(s["tokens"] for s in progress.shards if s["file"].startswith(split)) for split in ("train", "val")}
    meta = {"dtype": dtype.name, "vocab_size": tokenizer.vocab_size, "train_tokens": counts["train"],
            "val_tokens": counts["val"], "sources": [f"{PREFIX}{source.name}"], "documents": documents,
            "shards": {split: [s["file"] for s in progress.shards if s["file"].startswith(split)]
                       for split in ("train", "val")}}
    write_json(out_dir / "meta.json", meta)
    progress.done = True
    progress.save(out_dir)
    return meta


def _finish_shard(out_dir: Path, progress: Progress, tokens: np.ndarray) -> None:
    """Write the next shard whole (atomically), then record it and the new position."""
    name = shard_name(len(progress.shards))
    with atomic_path(out_dir / name) as tmp:
        tokens.tofile(tmp)
    progress.shards.append({"file": name, "tokens": int(len(tokens))})
    progress.save(out_dir)


def _progress_to_resume(out_dir: Path, settings: dict) -> Progress:
    """The progress of an earlier preparation in out_dir with the same settings (checking that its
    shards are there, whole), or a fresh one; a folder prepared otherwise is refused."""
    path = out_dir / PROGRESS_FILE
    if not path.exists():
        if (out_dir / "meta.json").exists():
            raise FileExistsError(f"{str(out_dir)!r} already holds prepared data; choose another --data.out_dir")
        return Progress(settings, [])
    progress = Progress(**json.loads(path.read_text()))
    if progress.settings != settings:
        changed = sorted(k for k in settings if settings[k] != progress.settings.get(k))
        raise ValueError(f"{str(out_dir)!r} holds a preparation with other settings ({', '.join(changed)}); "
                         f"use the same ones to resume it, or choose another --data.out_dir")
    itemsize = np.dtype(settings["dtype"]).itemsize
    for shard in progress.shards:
        file = out_dir / shard["file"]
        if not file.is_file() or file.stat().st_size != shard["tokens"] * itemsize:
            raise ValueError(f"{file} is missing or not the {shard['tokens']:,} tokens {PROGRESS_FILE} records; "
                             f"remove {str(out_dir)!r} and prepare it again")
    return progress
