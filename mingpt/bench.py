"""Speed benchmarks, side by side in one run: `mingpt bench`.

    mingpt bench                                  # both sizes, training and generation
    mingpt bench --sizes=chargpt --generate=False --out=bench.json

Training: ms/iter, tokens/s and MFU of a full step (forward, backward, clip, AdamW) for mingpt (its
Trainer's path: batches cut from one tensor, fused AdamW), Hugging Face's GPT2LMHeadModel at the same
shape and batches, and a plain reference loop (the same model, per-example DataLoader, foreach
AdamW). MFU = tokens/s x (6 N + 12 L T C) / peak, where N counts the parameters without the position
embedding (PaLM, appendix B) and peak is a 2048^3 fp32 matmul measured in the same run.
Generation: tokens/s for 500 greedy tokens at batch 1, with and without the KV cache, and
transformers' generate with its cache. Medians of the timed repeats after warm-up; spread = min..max.
"""
from __future__ import annotations

import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, RandomSampler

from mingpt.data import TokenStream
from mingpt.model import GPT
from mingpt.utils import CfgNode, set_seed, setup_logging

log = logging.getLogger(__name__)

# name: (n_layer, n_head, n_embd, block_size, batch_size)
SIZES = {
    "chargpt": (4, 4, 128, 64, 12),  # the chargpt recipe (nanoGPT's CPU recipe)
    "mini-256": (6, 6, 384, 256, 16),  # nanoGPT's Shakespeare-char model
}
VOCAB = 65


def get_config() -> CfgNode:
    return CfgNode(
        sizes="chargpt,mini-256",
        warmup=3,  # untimed iterations first
        repeats=10,  # timed iterations
        generate=True,  # also the generation benchmark (on mini-256, context 512)
        baselines=True,  # also Hugging Face and the reference loop
        out="benchmarks/bench.json",
        seed=1337,
    )


def measure_peak_flops() -> float:
    """FLOP/s of a 2048^3 fp32 matmul: the practical ceiling of a CPU (the median of 10)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    return 2 * 2048**3 / timed(lambda: a @ b, 10)["median"]


def timed(fn: Callable[[], object], repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def make_gpt(n_layer: int, n_head: int, n_embd: int, block_size: int) -> GPT:
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd = n_layer, n_head, n_embd
    config.vocab_size, config.block_size = VOCAB, block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = 0.0
    return GPT(config)


def make_hf(n_layer: int, n_head: int, n_embd: int, block_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=block_size,
                        vocab_size=VOCAB, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def train_steps(size: str, c: CfgNode) -> list[dict]:
    n_layer, n_head, n_embd, block_size, batch_size = SIZES[size]
    stream = TokenStream(torch.randint(VOCAB, (200_000,)), block_size)
    generator = torch.Generator().manual_seed(c.seed)
    train_config = CfgNode(learning_rate=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    flops_per_token = None
    runs = []

    def make_step(model, optimizer, next_batch, loss_of):
        """A full training step: batch, forward, backward, clip, AdamW."""
        def step():
            x, y = next_batch()
            loss = loss_of(model, x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    def next_stream_batch():
        return stream.get_batch(batch_size, generator)

    def gpt_loss(model, x, y):
        return model(x, y)[1]

    def mingpt_step():  # the Trainer's path: whole batches from one tensor, fused AdamW
        model = make_gpt(n_layer, n_head, n_embd, block_size)
        return model, make_step(model, model.configure_optimizers(train_config), next_stream_batch, gpt_loss)

    def reference_step():  # the same model, one Python __getitem__ per example, foreach AdamW
        model = make_gpt(n_layer, n_head, n_embd, block_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), foreach=True)
        loader = iter(DataLoader(stream, batch_size=batch_size,
                                 sampler=RandomSampler(stream, replacement=True, num_samples=10**9)))
        return model, make_step(model, optimizer, lambda: next(loader), gpt_loss)

    def hf_step():  # transformers shifts the labels itself
        model = make_hf(n_layer, n_head, n_embd, block_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
        return model, make_step(model, optimizer, next_stream_batch,
                                lambda m, x, y: m(input_ids=x, labels=x).loss)

    candidates = [("mingpt", mingpt_step)]
    if c.baselines:
        candidates += [("reference loop", reference_step)]
        if _has_transformers():
            candidates += [("huggingface GPT2LMHeadModel", hf_step)]
    for name, build in candidates:
        torch.manual_seed(c.seed)
        model, step = build()
        if flops_per_token is None:
            n = sum(p.numel() for p in model.parameters()) - block_size * n_embd
            flops_per_token = 6 * n + 12 * n_layer * block_size * n_embd
        for _ in range(c.warmup):
            step()
        t = timed(step, c.repeats)
        tokens = batch_size * block_size
        runs.append({"size": size, "impl": name, "ms_per_iter": 1000 * t["median"],
                     "ms_min": 1000 * t["min"], "ms_max": 1000 * t["max"],
                     "tokens_per_s": tokens / t["median"], "flops_per_token": flops_per_token})
        log.info(f"  {size:9s} {name:28s} {1000 * t['median']:8.1f} ms/iter")
    return runs


@torch.no_grad()
def generation(c: CfgNode, new_tokens: int = 500, context: int = 512) -> list[dict]:
    """Greedy generation of new_tokens at batch 1 on the mini-256 shape with a 512 context."""
    n_layer, n_head, n_embd, _, _ = SIZES["mini-256"]
    prompt = torch.randint(VOCAB, (1, 1))
    runs = []
    torch.manual_seed(c.seed)
    model = make_gpt(n_layer, n_head, n_embd, context).eval()
    for name, use_cache in (("mingpt KV cache", True), ("mingpt no cache", False)):
        model.generate(prompt, 5, use_cache=use_cache)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(prompt, new_tokens, use_cache=use_cache)
        seconds = time.perf_counter() - t0
        runs.append({"impl": name, "tokens_per_s": new_tokens / seconds, "seconds": seconds})
        log.info(f"  generate  {name:28s} {new_tokens / seconds:8.1f} tokens/s")
    if c.baselines and _has_transformers():
        hf = make_hf(n_layer, n_head, n_embd, context).eval()
        kwargs = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
        hf.generate(prompt, max_new_tokens=5, min_new_tokens=5, **kwargs)
        t0 = time.perf_counter()
        out = hf.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        seconds = time.perf_counter() - t0
        assert out.shape[1] == 1 + new_tokens
        runs.append({"impl": "huggingface generate (cache)", "tokens_per_s": new_tokens / seconds,
                     "seconds": seconds})
        log.info(f"  generate  {'huggingface generate (cache)':28s} {new_tokens / seconds:8.1f} tokens/s")
    return runs


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
        return True
    except ImportError:
        log.warning("transformers is not installed: the Hugging Face baseline is skipped")
        return False


def main(config: CfgNode) -> dict:
    setup_logging()
    set_seed(config.seed)
    sizes = [s.strip() for s in config.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; choose from {', '.join(SIZES)}")
    peak = measure_peak_flops()
    log.info(f"fp32 2048^3 matmul: {peak / 1e9:.1f} GFLOP/s with {torch.get_num_threads()} threads")
    train = [row for size in sizes for row in train_steps(size, config)]
    for row in train:
        row["mfu"] = row["tokens_per_s"] * row["flops_per_token"] / peak
        base = next(r for r in train if r["size"] == row["size"] and r["impl"] == "mingpt")
        row["mingpt_speedup"] = row["ms_per_iter"] / base["ms_per_iter"]
    generate = generation(config) if config.generate else []
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "peak_gflops": peak / 1e9, "train": train, "generate": generate}

    print(f"\nfp32 matmul peak {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)\n")
    print(f"{'size':9s} {'implementation':28s} {'ms/iter':>8s} {'spread':>15s} {'tokens/s':>9s} {'MFU':>6s} "
          f"{'mingpt is':>10s}")
    for r in train:
        spread = f"{r['ms_min']:.1f}..{r['ms_max']:.1f}"
        print(f"{r['size']:9s} {r['impl']:28s} {r['ms_per_iter']:8.1f} {spread:>15s} {r['tokens_per_s']:9.0f} "
              f"{r['mfu']:6.1%} {r['mingpt_speedup']:9.2f}x")
    if generate:
        print(f"\n{'generation (500 tokens, batch 1, 6/6/384, context 512)':58s} {'tokens/s':>9s}")
        for r in generate:
            print(f"{r['impl']:58s} {r['tokens_per_s']:9.1f}")
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("bench", sys.argv[1:]))
