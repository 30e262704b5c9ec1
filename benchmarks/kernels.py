"""The measurements behind mingpt's kernel choices on the CPU, side by side in one run.

    python benchmarks/kernels.py                      # prints a table, writes benchmarks/kernels.json

1. Attention, forward + backward at the two benchmark shapes: SDPA's fused kernel (what the model
   uses) against the same maths written out (q k^T, mask, softmax, @ v) and SDPA's math backend.
2. GELU forward + backward on the chargpt MLP's activations: GPT-2's tanh approximation (what
   the model uses) against the erf GELU, to show what PyTorch's vectorised tanh costs here.
3. Decoding's matrix-vector products: the 24 weight matrices of the 6/6/384 model times one
   vector, with the default BLAS (F.linear), with oneDNN, and with the weights transposed and
   sliced per thread (what CPULinear uses inside generate), at 1 and 2 threads.
4. torch.compile of the chargpt training step against eager, with its one-time compile cost.
5. The chargpt step's floor: its matrix products and its attention, each alone, next to the
   whole step of mingpt and of Hugging Face.
Each row is the median of several rounds in which the variants take turns.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp())  # a cold compile, as on a first run
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mingpt.jobs.bench import SIZES, VOCAB, training_step  # noqa: E402
from mingpt.nn.kernels import keep_freed_memory  # noqa: E402
from mingpt.nn.kernels.linear import onednn_linear, slice_weight, sliced_product  # noqa: E402


def take_turns(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each variant, timed in turns."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def attention(size: str, rounds: int) -> list[dict]:
    n_layer, n_head, n_embd, block_size, batch_size, _ = SIZES[size]
    q, k, v = (torch.randn(batch_size, n_head, block_size, n_embd // n_head, requires_grad=True)
               for _ in range(3))
    future = torch.ones(block_size, block_size, dtype=torch.bool).triu(1)

    def fused():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    def by_hand():
        scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5
        (scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v).sum().backward()

    def math_backend():
        with sdpa_kernel(SDPBackend.MATH):
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    ms = take_turns({"SDPA (fused CPU kernel)": fused, "written out": by_hand,
                     "SDPA math backend": math_backend}, rounds)
    return [{"what": f"attention fwd+bwd, one layer, {size}", "variant": name, "ms": t} for name, t in ms.items()]


def gelu(rounds: int) -> list[dict]:
    n_layer, n_head, n_embd, block_size, batch_size, _ = SIZES["chargpt"]
    x = torch.randn(batch_size * block_size, 4 * n_embd, requires_grad=True)
    ms = take_turns({"tanh approximation (GPT-2)": lambda: F.gelu(x, approximate="tanh").sum().backward(),
                     "erf (exact GELU)": lambda: F.gelu(x).sum().backward()}, rounds)
    return [{"what": f"GELU fwd+bwd, {x.numel():,} values (one chargpt MLP)", "variant": name, "ms": t}
            for name, t in ms.items()]


def block_linears(n_embd: int) -> list[tuple[int, int]]:
    """(in_features, out_features) of one Transformer block's Linears: c_attn, attn c_proj, c_fc,
    mlp c_proj."""
    return [(n_embd, 3 * n_embd), (n_embd, n_embd), (n_embd, 4 * n_embd), (4 * n_embd, n_embd)]


@torch.no_grad()
def matvec(rounds: int) -> list[dict]:
    n_layer, n_embd = SIZES["mini-256"][0], SIZES["mini-256"][2]
    weights = [(torch.randn(d_out, d_in), torch.randn(d_out), torch.randn(1, 1, d_in))
               for d_in, d_out in block_linears(n_embd) * n_layer]
    megabytes = sum(w.numel() for w, _, _ in weights) * 4 / 1e6
    rows, default_threads = [], torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        sliced = [(slice_weight(w), b, x) for w, b, x in weights]
        ms = take_turns({
            "default BLAS (F.linear)": lambda: [F.linear(x, w, b) for w, b, x in weights],
            "oneDNN": lambda: [onednn_linear(x, w, b) for w, b, x in weights],
            "sliced (decoding())": lambda: [sliced_product(x, w, b) for w, b, x in sliced],
        }, rounds)
        rows += [{"what": f"decoding matvecs, 6/6/384 ({megabytes:.0f} MB of weights), {threads} thread(s)",
                  "variant": name, "ms": t, "GB_per_s": megabytes / t} for name, t in ms.items()]
    torch.set_num_threads(default_threads)
    return rows


def compiled_step(rounds: int) -> list[dict]:
    eager = training_step("chargpt", seed=0)
    compiled = training_step("chargpt", seed=0, compile_model=True)
    t0 = time.perf_counter()
    compiled()
    compile_s = time.perf_counter() - t0
    ms = take_turns({"eager": eager, "torch.compile": compiled}, rounds)
    return [{"what": "chargpt training step", "variant": name, "ms": t,
             **({"compile_s": compile_s} if name == "torch.compile" else {})} for name, t in ms.items()]


def step_floor(rounds: int) -> list[dict]:
    """The chargpt training step next to what no implementation of it can skip: its matrix
    products (forward, input gradient and weight gradient of every Linear, on the default BLAS as
    the step uses at this size) and its attention forward + backward, each run alone; and Hugging
    Face's whole step, which runs the same products and attention."""
    n_layer, n_head, n_embd, block_size, batch_size, _ = SIZES["chargpt"]
    rows = batch_size * block_size
    products = [(torch.randn(rows, d_in), torch.randn(d_out, d_in), torch.randn(d_out), torch.randn(rows, d_out))
                for d_in, d_out in block_linears(n_embd) * n_layer]
    products.append((torch.randn(rows, n_embd), torch.randn(VOCAB, n_embd), None, torch.randn(rows, VOCAB)))  # the head
    q, k, v = (torch.randn(batch_size, n_head, block_size, n_embd // n_head, requires_grad=True) for _ in range(3))
    grad = torch.randn(batch_size, n_head, block_size, n_embd // n_head)

    def matmuls():
        for x, w, b, g in products:
            F.linear(x, w, b)
            g @ w
            g.t() @ x

    def attention_only():
        for _ in range(n_layer):
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), grad)

    variants = {"whole step, mingpt": training_step("chargpt", seed=0),
                "its matmuls alone": matmuls, "its attention alone": attention_only}
    try:
        variants["whole step, Hugging Face"] = training_step("chargpt", seed=0, hf=True, fused=False)
    except ImportError:
        print("transformers is not installed: no Hugging Face step in the floor comparison")
    ms = take_turns(variants, rounds)
    return [{"what": "chargpt training step and its floor", "variant": name, "ms": t} for name, t in ms.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "kernels.json"))
    args = parser.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    rows = attention("chargpt", 5 * args.rounds) + attention("mini-256", args.rounds // 4)
    rows += gelu(5 * args.rounds) + matvec(args.rounds) + compiled_step(5 * args.rounds)
    rows += step_floor(5 * args.rounds)
    print(f"\n{'what':62s} {'variant':26s} {'ms':>9s}")
    for r in rows:
        extra = f"  {r['GB_per_s']:.1f} GB/s" if "GB_per_s" in r else ""
        extra += f"  (compile {r['compile_s']:.1f} s)" if "compile_s" in r else ""
        print(f"{r['what']:62s} {r['variant']:26s} {r['ms']:9.2f}{extra}")
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
