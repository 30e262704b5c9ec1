"""Speed benchmarks, side by side in one run: `mingpt bench`.

    mingpt bench                                  # both sizes, training and generation
    mingpt bench --sizes=chargpt --generate=False --out=bench.json

Training: ms/iter, tokens/s and MFU of a full step (forward, backward, clip, AdamW) for mingpt (its
Trainer's path: batches cut from one tensor, fused AdamW, no host sync, malloc keeping freed
memory, oneDNN for large matmuls through mingpt.nn.kernels), Hugging Face's GPT2LMHeadModel at the same shape and batches, a
plain reference loop (the same model, per-example DataLoader, foreach AdamW, default malloc), and
mingpt with one speed-up undone at a time (the malloc at both sizes, oneDNN at mini-256 where it
applies, the others at chargpt where per-step overheads matter). Each runs in its own process, as
on a user's machine, and they take turns step by step, so a slow spell of this shared machine
hits them all alike.
MFU = tokens/s x (6 N + 12 L T C) / peak, where N counts the parameters without the position
embedding (PaLM, appendix B) and peak is the fastest of a few large fp32 matmuls measured in the
same run.
Generation: tokens/s for 500 greedy tokens at batch 1 on 6/6/384 with a 512 context: mingpt with
its KV cache (and sliced weights, kernels/linear.py), with the cache but oneDNN's or the default BLAS's
matrix-vector product, without the cache, and transformers' generate with its cache, also taking
turns.
"""
from __future__ import annotations

import logging
import multiprocessing
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
from mingpt.nn import kernels
from mingpt.nn.kernels import CPUKernels
from mingpt.utils import CfgNode, set_seed, setup_logging, write_json

log = logging.getLogger(__name__)

# name: (n_layer, n_head, n_embd, block_size, batch_size, timed steps when --repeats is not given)
SIZES = {
    "chargpt": (4, 4, 128, 64, 12, 40),  # the chargpt recipe (nanoGPT's CPU recipe)
    "mini-256": (6, 6, 384, 256, 16, 8),  # nanoGPT's Shakespeare-char model
}
VOCAB = 65


def get_config() -> CfgNode:
    return CfgNode(
        sizes="chargpt,mini-256",
        warmup=3,  # untimed steps of each implementation first
        repeats=None,  # timed steps of each implementation (None: the size's default)
        generate=True,  # also the generation benchmark (on mini-256, context 512)
        gen_repeats=3,  # timed generations of each implementation
        baselines=True,  # also Hugging Face, the reference loop and mingpt minus each speed-up
        out="benchmarks/bench.json",
        seed=1337,
    )


def measure_peak_flops() -> tuple[float, int]:
    """FLOP/s of the fastest of a few large fp32 matmuls (median of 5 each): the practical
    ceiling of this CPU, and the size that reached it."""
    best = (0.0, 0)
    for n in (2048, 3072, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        times = []
        for _ in range(6):  # the first is a warm-up
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        best = max(best, (2 * n**3 / statistics.median(times[1:]), n))
    return best


def make_gpt(n_layer: int, n_head: int, n_embd: int, block_size: int) -> GPT:
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd = n_layer, n_head, n_embd
    config.vocab_size, config.block_size = VOCAB, block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = 0.0
    config.tie_embeddings = True  # as Hugging Face's GPT-2
    return GPT(config)


def make_hf(n_layer: int, n_head: int, n_embd: int, block_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=block_size,
                        vocab_size=VOCAB, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def training_step(size: str, seed: int, hf: bool = False, loader: bool = False, fused: bool = True,
                  read_loss: bool = False, onednn: bool = True, compile_model: bool = False) -> Callable[[], None]:
    """One full training step (batch, forward, backward, clip, AdamW) at this size.

    mingpt's Trainer path on the CPU is the default; each flag undoes one of its speed-ups: hf
    (Hugging Face's model), loader (a DataLoader calling __getitem__ per example instead of whole
    batches cut from one tensor), fused=False (foreach AdamW), read_loss (a host sync every step),
    onednn=False (the default BLAS for every matmul: the model's plain nn.Linears).
    compile_model runs the model through torch.compile (the first call compiles).
    """
    n_layer, n_head, n_embd, block_size, batch_size, _ = SIZES[size]
    torch.manual_seed(seed)
    stream = TokenStream(torch.randint(VOCAB, (200_000,)), block_size)
    model = (make_hf if hf else make_gpt)(n_layer, n_head, n_embd, block_size)
    if not hf and onednn:
        kernels.use_cpu_kernels(model)  # as the Trainer does on the CPU
    if fused and not hf:
        optimizer = model.configure_optimizers(CfgNode(learning_rate=1e-3, betas=(0.9, 0.99), weight_decay=0.1))
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), foreach=True)
    if loader:
        sampler = RandomSampler(stream, replacement=True, num_samples=10**9)
        next_batch = iter(DataLoader(stream, batch_size=batch_size, sampler=sampler)).__next__
    else:
        generator = torch.Generator().manual_seed(seed)
        next_batch = lambda: stream.get_batch(batch_size, generator)  # noqa: E731

    forward = torch.compile(model) if compile_model else model

    def step():
        x, y = next_batch()
        loss = forward(input_ids=x, labels=x).loss if hf else forward(x, y)[1]  # transformers shifts labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if read_loss:
            loss.item()
    return step


def generation(seed: int, hf: bool = False, use_cache: bool = True, sliced: bool = True,
               onednn: bool = True, new_tokens: int = 500, context: int = 512) -> Callable[[], None]:
    """Greedy generation of new_tokens at batch 1 on the mini-256 shape with a 512 context.
    sliced=False makes mingpt decode with oneDNN's matrix-vector kernel instead of sliced weights;
    onednn=False too, with the default BLAS (the kernels' settings, given to the model)."""
    n_layer, n_head, n_embd = SIZES["mini-256"][:3]
    torch.manual_seed(seed)
    prompt = torch.randint(VOCAB, (1, 1))
    model = (make_hf if hf else make_gpt)(n_layer, n_head, n_embd, context).eval()
    if not hf and not (sliced and onednn):  # (by default generate uses the default CPUKernels)
        kernels.use_cpu_kernels(model, CPUKernels(onednn=onednn, sliced_decoding=sliced))
    kwargs = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))

    @torch.no_grad()
    def generate():
        if hf:
            out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        else:
            out = model.generate(prompt, new_tokens, use_cache=use_cache)
        assert out.shape == (1, 1 + new_tokens)
    return generate


class Worker:
    """One implementation in its own process, run on request: each keeps its own memory
    allocator state and settings (as it would on a user's machine), and only one computes at a
    time. Calling it runs the benchmark function once and returns the seconds it took and the
    page faults it caused."""

    def __init__(self, build: str, kwargs: dict, keep_memory: bool) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, daemon=True,
                                       args=(child, build, kwargs, keep_memory, torch.get_num_threads()))
        self.process.start()

    def __call__(self) -> tuple[float, int]:
        self.conn.send(True)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(False)
        self.process.join()


def _serve(conn, build: str, kwargs: dict, keep_memory: bool, threads: int) -> None:
    torch.set_num_threads(threads)
    if keep_memory:
        kernels.keep_freed_memory()
    fn = {"training_step": training_step, "generation": generation}[build](**kwargs)
    while conn.recv():
        faults, t0 = page_faults(), time.perf_counter()
        fn()
        conn.send((time.perf_counter() - t0, page_faults() - faults))


def page_faults() -> int:
    """Page faults of this process so far (0 where the OS does not count them, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_rounds(workers: dict[str, Worker], warmup: int, rounds: int) -> dict[str, dict]:
    """Run each worker warmup times, then once per round, taking turns (a slow spell of the
    machine hits them all alike); median, min and max seconds, and median page faults, of each."""
    for _ in range(warmup):
        for worker in workers.values():
            worker()
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in workers}
    for _ in range(rounds):
        for name, worker in workers.items():
            runs[name].append(worker())
    for worker in workers.values():
        worker.close()
    stats = {}
    for name, r in runs.items():
        seconds = [t for t, _ in r]
        stats[name] = {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds),
                       "page_faults": statistics.median(f for _, f in r)}
    return stats


def train_benchmark(size: str, c: CfgNode) -> list[dict]:
    n_layer, n_head, n_embd, block_size, batch_size, default_repeats = SIZES[size]
    variants = {"mingpt": ({}, True)}  # name: (training_step flags, keep freed memory)
    if c.baselines:
        variants["mingpt, default malloc"] = ({}, False)
        if size != "chargpt":  # chargpt's products are all too small to leave the default BLAS
            variants["mingpt, default BLAS matmuls"] = ({"onednn": False}, True)
        if size == "chargpt":  # where per-step overheads matter: each speed-up undone alone
            variants["mingpt, foreach AdamW"] = ({"fused": False}, True)
            variants["mingpt, per-example DataLoader"] = ({"loader": True}, True)
            variants["mingpt, loss read every step"] = ({"read_loss": True}, True)
        variants["reference loop"] = ({"loader": True, "fused": False, "read_loss": True}, False)
        if _has_transformers():
            variants["huggingface GPT2LMHeadModel"] = ({"hf": True, "fused": False}, False)
    workers = {name: Worker("training_step", {"size": size, "seed": c.seed, **flags}, keep)
               for name, (flags, keep) in variants.items()}
    times = timed_rounds(workers, c.warmup, c.repeats or default_repeats)
    flops = make_gpt(n_layer, n_head, n_embd, block_size).flops_per_token()
    rows = []
    for name, t in times.items():
        rows.append({"size": size, "impl": name, "ms_per_iter": 1000 * t["median"],
                     "ms_min": 1000 * t["min"], "ms_max": 1000 * t["max"],
                     "tokens_per_s": batch_size * block_size / t["median"],
                     "flops_per_token": flops, "page_faults_per_step": t["page_faults"]})
        log.info(f"  {size:9s} {name:32s} {1000 * t['median']:8.1f} ms/iter")
    return rows


def generation_benchmark(c: CfgNode, new_tokens: int = 500) -> list[dict]:
    variants = {"mingpt KV cache": {}}
    if c.baselines:
        variants["mingpt KV cache, oneDNN matvec"] = {"sliced": False}
        variants["mingpt KV cache, default BLAS matvec"] = {"sliced": False, "onednn": False}
        variants["mingpt no cache"] = {"use_cache": False}
        if _has_transformers():
            variants["huggingface generate (cache)"] = {"hf": True}
    workers = {name: Worker("generation", {"seed": c.seed, "new_tokens": new_tokens, **flags},
                            keep_memory=not flags.get("hf")) for name, flags in variants.items()}
    rows = []
    for name, t in timed_rounds(workers, 1, c.gen_repeats).items():
        rows.append({"impl": name, "tokens_per_s": new_tokens / t["median"], "seconds": t["median"],
                     "seconds_min": t["min"], "seconds_max": t["max"]})
        log.info(f"  generate  {name:36s} {new_tokens / t['median']:8.1f} tokens/s")
    return rows


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
    peak, peak_n = measure_peak_flops()
    log.info(f"fp32 {peak_n}^3 matmul: {peak / 1e9:.1f} GFLOP/s with {torch.get_num_threads()} threads")
    train = [row for size in sizes for row in train_benchmark(size, config)]
    for row in train:
        row["mfu"] = row["tokens_per_s"] * row["flops_per_token"] / peak
        base = next(r for r in train if r["size"] == row["size"] and r["impl"] == "mingpt")
        row["mingpt_speedup"] = row["ms_per_iter"] / base["ms_per_iter"]
    generate = generation_benchmark(config) if config.generate else []
    if generate:
        base = generate[0]["tokens_per_s"]
        for row in generate:
            row["mingpt_speedup"] = base / row["tokens_per_s"]
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "peak_gflops": peak / 1e9, "peak_matmul_n": peak_n,
              "train": train, "generate": generate}

    print(f"\nfp32 matmul peak {peak / 1e9:.1f} GFLOP/s ({peak_n}^3, {torch.get_num_threads()} threads)\n")
    print(f"{'size':9s} {'implementation':32s} {'ms/iter':>8s} {'spread':>15s} {'tokens/s':>9s} {'MFU':>6s} "
          f"{'mingpt is':>10s} {'faults/step':>12s}")
    for r in train:
        spread = f"{r['ms_min']:.1f}..{r['ms_max']:.1f}"
        print(f"{r['size']:9s} {r['impl']:32s} {r['ms_per_iter']:8.1f} {spread:>15s} {r['tokens_per_s']:9.0f} "
              f"{r['mfu']:6.1%} {r['mingpt_speedup']:9.2f}x {r['page_faults_per_step']:12.0f}")
    if generate:
        print(f"\n{'generation (500 tokens, batch 1, 6/6/384, context 512)':58s} {'tokens/s':>9s} "
              f"{'mingpt is':>10s}")
        for r in generate:
            print(f"{r['impl']:58s} {r['tokens_per_s']:9.1f} {r['mingpt_speedup']:9.2f}x")
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("bench", sys.argv[1:]))
