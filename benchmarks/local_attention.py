"""What GPT-3's locally banded attention saves, on this machine, in one run.

    python benchmarks/local_attention.py             # prints a table, writes benchmarks/local_attention.json

1. One attention layer, forward + backward (12 heads of 64, batch 1, window 256) at T = 1024,
   2048 and 4096: dense causal SDPA (a global layer), the band through mingpt.nn.kernels.banded (a
   local layer), and the band as a boolean mask through SDPA (what the band costs done naively).
2. A whole training step (forward, backward, AdamW) of a long-context model, 2 layers, 2 heads,
   64 dims, characters, batch 1, at the same lengths: all layers local against all global.
3. KV-cache memory at 2048 tokens for GPT-3 Small (12 layers of 768, alternating, window 256)
   against the same model all global.
Each row is the median of several rounds in which the variants take turns.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kernels import take_turns  # noqa: E402  (benchmarks/kernels.py)

from mingpt.model import GPT  # noqa: E402
from mingpt.nn.cache import KVCache  # noqa: E402
from mingpt.nn.kernels import keep_freed_memory  # noqa: E402
from mingpt.nn.kernels.banded import band_mask, banded_attention  # noqa: E402

WINDOW = 256
LENGTHS = (1024, 2048, 4096)


def attention_layer(T: int, rounds: int) -> list[dict]:
    q, k, v = (torch.randn(1, T, 12, 64).transpose(1, 2).requires_grad_() for _ in range(3))  # as the model lays them out
    grad = torch.randn(1, 12, T, 64)
    mask = band_mask(T, WINDOW)
    variants = {
        "global: dense causal SDPA": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad),
        "local: mingpt banded": lambda: banded_attention(q, k, v, WINDOW).backward(grad),
        "local: SDPA with a band mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad),
    }
    ms = take_turns(variants, rounds, warmup=2)
    return [{"what": f"attention fwd+bwd, 12 heads x 64, T={T}", "T": T, "variant": name, "ms": t}
            for name, t in ms.items()]


def long_context_model(pattern: tuple[str, ...], T: int) -> GPT:
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd, config.vocab_size, config.block_size = 2, 2, 64, 65, T
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = 0.0
    config.attention_pattern, config.window_size = pattern, WINDOW
    return GPT(config)


def training_step(T: int, rounds: int) -> list[dict]:
    variants = {}
    x, y = torch.randint(0, 65, (1, T)), torch.randint(0, 65, (1, T))
    for name, pattern in (("all global", ("global",)), ("all local", ("local",))):
        torch.manual_seed(0)
        model = long_context_model(pattern, T)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

        def step(model=model, optimizer=optimizer):
            _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        variants[name] = step
    ms = take_turns(variants, rounds, warmup=2)
    return [{"what": f"training step, 2 layers x 2 heads x 64 dims, T={T}", "T": T, "variant": name, "ms": t}
            for name, t in ms.items()]


def cache_memory(tokens: int = 2048) -> list[dict]:
    rows = []
    for name, pattern in (("all global", ("global",)), ("GPT-3: global, local", ("global", "local"))):
        windows = [WINDOW if pattern[i % len(pattern)] == "local" else None for i in range(12)]
        cache = KVCache(12, 1, 12, tokens, 64, "meta", torch.float32, windows)
        rows.append({"what": f"KV cache at {tokens} tokens, GPT-3 Small (fp32)", "variant": name,
                     "MiB": cache.nbytes() / 2**20})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "local_attention.json"))
    args = parser.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    rows = []
    for T in LENGTHS:
        rows += attention_layer(T, args.rounds)
    for T in LENGTHS:
        rows += training_step(T, args.rounds)
    rows += cache_memory()
    baselines = {r["what"]: r["ms"] for r in rows if "ms" in r and r["variant"].startswith(("global", "all global"))}
    print(f"\n{'what':52s} {'variant':30s} {'ms':>9s} {'speed-up':>9s}")
    for r in rows:
        if "MiB" in r:
            print(f"{r['what']:52s} {r['variant']:30s} {r['MiB']:8.1f} MiB")
            continue
        r["speedup_vs_global"] = baselines[r["what"]] / r["ms"]
        print(f"{r['what']:52s} {r['variant']:30s} {r['ms']:9.1f} {r['speedup_vs_global']:8.2f}x")
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor()
              or platform.machine(), "window": WINDOW, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
