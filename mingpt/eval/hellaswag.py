"""HellaSwag (Zellers et al., 2019): pick the ending of a short story that makes sense, out of four.
This module reads its items and turns each into a multiple-choice question exactly as
lm-evaluation-harness's `hellaswag` task does; choice.py scores the questions on a model.

One line of the jsonl file (rowanz/hellaswag's format; the Hugging Face copy has the same keys):
    {"activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow
     covering the window of a car, and a woman wearing winter clothes smiles.", "ctx_b": "then",
     "endings": [", the man adds wax to the windshield and cuts it.", ...], "label": 3, ...}
becomes the question
    query   "Removing ice from car: Then, the man writes over ... smiles. Then"
    choices [", the man adds wax to the windshield and cuts it.", ...]   gold 3
and each choice is scored as the continuation " " + choice of the query.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mingpt.utils import cache_dir, download

# the validation split, from the authors' repository at a fixed commit, checked by the id that
# the repository's tree gives the file (data/hellaswag_val.jsonl, unchanged since commit 6774d74)
VAL_URL = ("https://raw.githubusercontent.com/rowanz/hellaswag/"
           "a29ff8e9a04bba4bd6588223785ce105328adc57/data/hellaswag_val.jsonl")
VAL_GIT_BLOB = "0f5ee25d72216f12317d5d8a7b92deafa423d81e"
VAL_ITEMS = 10042
NEEDED_KEYS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")


@dataclass(frozen=True)
class Question:
    """A multiple-choice question: a context, the texts that may follow it, the right one's index."""
    query: str
    choices: tuple[str, ...]
    gold: int


def preprocess(text: str) -> str:
    """The harness's clean-up of HellaSwag's text: WikiHow's "[title]" marks become sentence
    ends, other bracketed marks ("[header]", "[step]") go, and double spaces become one."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def question(item: dict) -> Question:
    """One item of the file as the harness asks it (its process_docs): the activity label, then
    ctx_a and ctx_b (capitalised) joined by a space; the endings cleaned the same way."""
    context = item["ctx_a"] + " " + item["ctx_b"].capitalize()
    return Question(preprocess(item["activity_label"] + ": " + context),
                    tuple(preprocess(ending) for ending in item["endings"]), int(item["label"]))


def read_questions(path: str | Path, limit: int | None = None) -> list[Question]:
    """The questions of a HellaSwag jsonl file (the first `limit` of them, if given). A line that
    is not such an item is refused, naming its line number and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no HellaSwag file at {str(path)!r}; pass a jsonl file of its items "
                                f"(--data.path=FILE.jsonl), or leave it unset to download the validation set")
    questions = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and len(questions) >= limit:
                break
            if line.strip():
                questions.append(_parse(line, path, number))
    if not questions:
        raise ValueError(f"{path} holds no HellaSwag items; pass a jsonl file with one item per line")
    return questions


def _parse(line: str, path: Path, number: int) -> Question:
    where = f"{path}, line {number}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not JSON ({e.msg}); each line must be one HellaSwag item") from None
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not a JSON object; each line must be one HellaSwag item")
    missing = [key for key in NEEDED_KEYS if key not in item]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}; a HellaSwag item has {', '.join(NEEDED_KEYS)}")
    endings = item["endings"]
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise ValueError(f"{where}: endings must be a list of at least two strings, got {endings!r}")
    if not all(isinstance(item[key], str) for key in ("activity_label", "ctx_a", "ctx_b")):
        raise ValueError(f"{where}: activity_label, ctx_a and ctx_b must be strings")
    try:
        label = int(item["label"])
    except (TypeError, ValueError):
        label = -1
    if not 0 <= label < len(endings) or isinstance(item["label"], bool):
        raise ValueError(f"{where}: label={item['label']!r} must be the index of the right ending, "
                         f"0 to {len(endings) - 1}")
    return question(item)


def validation_file() -> Path:
    """The validation set's jsonl file (about 11 MB), downloaded once into the cache folder and
    checked against the repository's record of it."""
    path = cache_dir() / "hellaswag" / "hellaswag_val.jsonl"
    if not path.exists():
        download(VAL_URL, path, "HellaSwag's validation set",
                 f"connect to the internet, or download {VAL_URL} yourself and pass "
                 f"--data.path=FILE.jsonl", git_blob=VAL_GIT_BLOB)
    return path


def load(path: str | Path | None = None, limit: int | None = None) -> list[Question]:
    """The questions of a local file, or (path None or '') of the validation set."""
    return read_questions(path or validation_file(), limit)
