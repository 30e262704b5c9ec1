"""Benchmark: encoding Tiny Shakespeare with mingpt's GPT-2 tokenizer against tiktoken itself.

    python benchmarks/tokenizer.py [--text PATH] [--repeats 7] [--json benchmarks/tokenizer.json]

Prints a table (median and spread of the repeats) and writes JSON. The baseline is tiktoken's
gpt2 encoding built offline by tiktoken's own loader from the same vocabulary files; each engine is
timed in the same run, interleaved, so the ratio is what to read on a noisy machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import tiktoken
import tiktoken.load
import torch

from mingpt.bpe import GPT2_PATTERN, BPETokenizer, find_vocab_files

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "tokenizer.json"))
    args = parser.parse_args()
    text = Path(args.text).read_text(encoding="utf-8")

    files = find_vocab_files()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(files["vocab.bpe"]), str(files["encoder.json"]))
    reference = tiktoken.Encoding(name="gpt2-ref", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={"<|endoftext|>": 50256})
    engines = {
        "tiktoken (baseline)": reference.encode_ordinary,
        "mingpt BPETokenizer": BPETokenizer().encode,
        "mingpt python engine": lambda t: BPETokenizer(engine="python").encode(t),  # fresh cache each time
    }
    expected = reference.encode_ordinary(text)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, encode in engines.items():
            start = time.perf_counter()
            ids = encode(text)
            times[name].append(time.perf_counter() - start)
            assert ids == expected, f"{name} gave different ids"

    base = statistics.median(times["tiktoken (baseline)"])
    rows = []
    print(f"{'engine':24s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'Mtok/s':>7s} {'speed vs tiktoken':>18s}")
    for name, ts in times.items():
        median = statistics.median(ts)
        rows.append({"engine": name, "median_s": median, "min_s": min(ts), "max_s": max(ts),
                     "tokens": len(expected), "speed_vs_tiktoken": base / median})
        print(f"{name:24s} {median:9.4f} {min(ts):7.4f} {max(ts):7.4f} {len(expected) / median / 1e6:7.2f} "
              f"{base / median:17.2f}x")
    result = {"benchmark": "gpt2 tokenizer encode", "text": args.text, "chars": len(text),
              "tokens": len(expected), "repeats": args.repeats, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "tiktoken": tiktoken.__version__,
              "rows": rows}
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
