"""Decoding speed on the CPU: generate's usual loop against the static-shape step (mingpt/nn/decode.py),
eager and compiled (torch.compile, inductor), greedy, with random weights.

    PYTHONPATH=. python benchmarks/decode.py --models gpt-micro gpt2 --batches 1 8

For each model shape and batch: tokens/s of each way (best of --repeats timed calls, the prompt's
forward included), the compiled step's compile cost (its first call minus a timed call) and whether
every way chose the same tokens. Prints a table and writes JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from mingpt.model import GPT

# (n_layer, n_head, n_embd) from the presets; the vocabulary and context of a typical use
SHAPES = {"gpt-micro": dict(vocab_size=65, block_size=256), "gpt2": dict(vocab_size=50257, block_size=1024)}
WAYS = {"usual loop": False, "static eager": "eager", "static compiled": "default"}


def build(name: str) -> GPT:
    config = GPT.get_default_config()
    config.model_type = name
    config.merge_from_dict(SHAPES[name])
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = 0.0
    config.tie_embeddings = True
    torch.manual_seed(0)
    return GPT(config).eval()


def timed(model: GPT, prompt: torch.Tensor, new_tokens: int, static) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = model.generate(prompt, new_tokens, static=static)
    return time.perf_counter() - start, out


def measure(name: str, batch: int, new_tokens: int, repeats: int, prompt_len: int = 16) -> dict:
    """One model and batch: each way's first call (the compiled step compiles there), then
    `repeats` rounds of one timed call per way, taking turns so that a busy machine slows every
    way alike; the best call of each way counts. Each way has its own copy of the model (the same
    weights), since a model keeps one static decoder at a time."""
    torch._dynamo.reset()
    models = {way: build(name) for way in WAYS}
    prompt = torch.randint(models["usual loop"].config.vocab_size, (batch, prompt_len))
    row = {"model": name, "batch": batch, "prompt": prompt_len, "new_tokens": new_tokens}
    outputs, first, best = {}, {}, {}
    for way, static in WAYS.items():
        first[way], outputs[way] = timed(models[way], prompt, new_tokens, static)
    for _ in range(repeats):
        for way, static in WAYS.items():
            seconds, _ = timed(models[way], prompt, new_tokens, static)
            best[way] = min(best.get(way, seconds), seconds)
    for way in WAYS:
        row[way] = {"tokens_per_s": batch * new_tokens / best[way], "seconds": best[way], "first_call_s": first[way]}
    row["static compiled"]["compile_s"] = first["static compiled"] - best["static compiled"]
    row["same_tokens"] = all(torch.equal(out, outputs["usual loop"]) for out in outputs.values())
    usual, compiled = row["usual loop"], row["static compiled"]
    saved_per_token = (usual["seconds"] - compiled["seconds"]) / new_tokens
    # from how many new tokens the compile is paid back (None: the compiled step is not faster)
    row["compiled_pays_from_tokens"] = (compiled["compile_s"] / saved_per_token) if saved_per_token > 0 else None
    return row


def cpu_name() -> str:
    """The CPU's model name, as lscpu shows it (Linux), else what platform knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", nargs="+", type=int, default=None,
                        help="per model, in the order of --models (default: 200 for gpt-micro, 48 for gpt2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/decode.json")
    args = parser.parse_args()
    new_tokens = args.new_tokens or [200 if m == "gpt-micro" else 48 for m in args.models]
    rows = [measure(m, b, n, args.repeats) for m, n in zip(args.models, new_tokens) for b in args.batches]
    print(f"{'model':10} {'batch':>5} {'new':>4} " + " ".join(f"{w + ' tok/s':>22}" for w in WAYS)
          + f" {'compile s':>9} {'pays from':>9} same")
    for r in rows:
        pays = r["compiled_pays_from_tokens"]
        print(f"{r['model']:10} {r['batch']:5} {r['new_tokens']:4} "
              + " ".join(f"{r[w]['tokens_per_s']:22.1f}" for w in WAYS)
              + f" {r['static compiled']['compile_s']:9.1f} {('never' if pays is None else f'{pays:.0f}'):>9} "
              + f"{r['same_tokens']}")
    machine = {"processor": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "load_average_1min": os.getloadavg()[0]}  # (a shared machine: its load says how far to trust this)
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
