"""GPU check (about 8 minutes on one H200, every section under its own time guard): GPT-2 124M
training MFU and its profile, decoding speed against Hugging Face, and the Trainer's CUDA path.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out gpu_check.json
    PYTHONPATH=. python3 benchmarks/gpu_check.py --dry-run      # on the CPU, tiny sizes: a smoke test

Each section runs in its own process with a timeout (min of its budget and what is left of
--budget-s); one that runs out or fails is recorded as such, with what it had written so far.
1. peak: an 8192^3 bf16 matmul, timed with CUDA events (the MFU denominator, measured here).
2. decode (issue 16): greedy decoding of GPT-2 124M in bf16 at batch 1 and 8, 256 new tokens from
   16-token prompts: generate's usual loop, the static-shape step (mingpt/nn/decode.py) under
   torch.compile mode="reduce-overhead" (a CUDA graph), Hugging Face transformers' generate (its
   dynamic cache, then its static cache, which it compiles); tokens/s, compile cost, from how many
   new tokens the static step pays, and where the greedy tokens of the ways part (bf16 rounding);
   then fp32 (no TF32): the usual loop against the eager static step, which should agree.
3. train_profile (issue 16): GPT-2 124M training steps (bf16 autocast, fused AdamW, torch.compile)
   with variants: batch 16 / 32, SDPA backend (flash, efficient, cuDNN), and torch.profiler's top
   CUDA kernels of the batch-16 step; MFU = tokens/s * FLOPs/token / peak, with FLOPs/token =
   6 N + 12 L T C (N: parameters without the position embedding; PaLM appendix B). mingpt has no
   fused cross-entropy: the profile shows what the head and the loss cost.
4. local (banded) attention, window 256, fwd+bwd in bf16 at T = 2048 and 4096: FlexAttention
   with the band's block mask (mingpt.nn.kernels.banded) against dense causal SDPA, and its largest
   difference from the masked reference.
5. the Trainer on CUDA: `mingpt chargpt` (device auto), resumed, then `mingpt sample`.
6. train_autotune: the batch-16 step under torch.compile mode="max-autotune" (slow to compile:
   last, with what time is left).
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from mingpt.model import GPT
from mingpt.utils import CfgNode


def cuda_time(fn, repeats: int) -> float:
    """Mean seconds per call of fn over repeats, after the caller's warm-up."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def matmul_peak(device: str = "cuda") -> float:
    """FLOP/s of a large matmul, the MFU denominator: bf16 8192^3 on the current GPU; on the CPU
    (smoke tests only) fp32 1024^3."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        return 2 * n**3 / cuda_time(lambda: a @ b, 10)
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * n**3 / (time.perf_counter() - t0)


@dataclass(frozen=True)
class Sizes:
    """What a run measures: GPT-2 124M on the GPU, or (--dry-run) a tiny GPT on the CPU."""
    device: str
    dims: dict
    vocab_size: int
    block_size: int
    dtype: torch.dtype  # of the decoding weights
    train_batches: tuple = (16, 32)
    train_steps: int = 20
    new_tokens: int = 256
    prompt: int = 16


FULL = Sizes("cuda", dict(model_type="gpt2"), 50257, 1024, torch.bfloat16)
DRY = Sizes("cpu", dict(n_layer=2, n_head=2, n_embd=64), 512, 64, torch.float32, train_batches=(2,),
            train_steps=2, new_tokens=12)


def gpt2(block_size: int = 1024, device: str = "cuda", sizes: Sizes = FULL) -> GPT:
    config = GPT.get_default_config()
    config.merge_from_dict(sizes.dims)
    config.vocab_size, config.block_size = sizes.vocab_size, block_size if sizes is FULL else sizes.block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = 0.0
    config.tie_embeddings = True  # GPT-2's 124M
    return GPT(config).to(device if sizes is FULL else sizes.device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn, repeats: int, device: str) -> float:
    """Mean seconds per call of fn over repeats (CUDA events on the GPU), after the caller's warm-up."""
    if device == "cuda":
        return cuda_time(fn, repeats)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def wall(fn, device: str):
    """(seconds, result) of one call of fn, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def first_differences(a: torch.Tensor, b: torch.Tensor, start: int) -> list:
    """Per row, the first new token (counted from 0) where a and b differ, None where they agree."""
    differs = (a[:, start:] != b[:, start:]).cpu()
    return [int(row.nonzero()[0]) if row.any() else None for row in differs]


def hf_generate(hf, prompt: torch.Tensor, new_tokens: int, static_cache: bool = False) -> torch.Tensor:
    """Hugging Face's greedy generate for exactly new_tokens (min_new_tokens: no stop at EOS);
    static_cache: its StaticCache, which it compiles on CUDA."""
    extra = dict(cache_implementation="static") if static_cache else {}
    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **extra)


def decode_check(sizes: Sizes, write) -> dict:
    """Issue 16's decoding section (see the module docstring); write(result) saves it as it grows."""
    from mingpt.nn import decode
    device, n, mode = sizes.device, sizes.new_tokens, "reduce-overhead"
    torch._logging.set_logs(perf_hints=True)  # prints why, if the CUDA graph is skipped
    result = {"new_tokens": n, "prompt": sizes.prompt, "static_mode": mode, "rows": [],
              "cuda_min_new_tokens_now": decode.CUDA_MIN_NEW_TOKENS}
    torch.manual_seed(0)
    model = gpt2(sizes=sizes).eval()
    hf = None
    try:
        from transformers import GPT2LMHeadModel
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)  # the same weights, as a Hugging Face GPT-2 folder
            hf = GPT2LMHeadModel.from_pretrained(tmp, dtype=sizes.dtype).to(device).eval()
        result["transformers"] = __import__("transformers").__version__
    except ImportError:
        result["transformers"] = "not installed (pip install transformers): its rows are left out"
    model = model.to(sizes.dtype)
    prompts = torch.randint(sizes.vocab_size, (8, sizes.prompt), generator=torch.Generator().manual_seed(0)).to(device)
    outputs = {}
    for batch in (1, 8):
        prompt, row, outs = prompts[:batch], {"batch": batch}, {}
        model.generate(prompt, 8, static=False)  # warm-up
        usual_s, outs["usual"] = wall(lambda: model.generate(prompt, n, static=False), device)
        row["usual_tokens_per_s"] = batch * n / usual_s
        first_s, outs["static"] = wall(lambda: model.generate(prompt, n, static=mode), device)  # compiles
        static_s = min(wall(lambda: model.generate(prompt, n, static=mode), device)[0] for _ in range(3))
        row.update(static_tokens_per_s=batch * n / static_s, static_first_call_s=first_s,
                   static_compile_s=first_s - static_s)
        saved = (usual_s - static_s) / n  # seconds each new token saves once compiled
        row["static_pays_from_tokens"] = row["static_compile_s"] / saved if saved > 0 else None
        if hf is not None:
            hf_generate(hf, prompt, 8)
            hf_s, outs["hf"] = wall(lambda: hf_generate(hf, prompt, n), device)
            row["hf_tokens_per_s"] = batch * n / hf_s
        names = list(outs)
        row["first_difference"] = {f"{a}_vs_{b}": first_differences(outs[a], outs[b], sizes.prompt)
                                   for i, a in enumerate(names) for b in names[i + 1:]}
        outputs[batch] = outs
        result["rows"].append(row)
        write(result)
        print(f"decode batch {batch}: " + ", ".join(f"{k} {v:,.1f}" for k, v in row.items() if k.endswith("per_s"))
              + f" tok/s; compile {row['static_compile_s']:.1f} s", flush=True)
        decode.forget(model)  # its cache, before the next batch's
    if hf is not None:  # Hugging Face's own fast path: its static cache, compiled
        for row in result["rows"]:
            prompt = prompts[:row["batch"]]
            first_s, out = wall(lambda: hf_generate(hf, prompt, n, static_cache=True), device)
            hf_static_s = min(wall(lambda: hf_generate(hf, prompt, n, static_cache=True), device)[0] for _ in range(2))
            row.update(hf_static_tokens_per_s=row["batch"] * n / hf_static_s, hf_static_first_call_s=first_s,
                       hf_static_vs_hf=first_differences(out, outputs[row["batch"]]["hf"], sizes.prompt))
            write(result)
    # fp32 without TF32: the usual loop and the eager static step should choose the same tokens
    torch.backends.cuda.matmul.allow_tf32 = False
    model = model.float()
    prompt = prompts[:8]
    fp32_new = min(n, 64)
    usual = model.generate(prompt, fp32_new, static=False)
    result["fp32_usual_vs_static_eager"] = first_differences(usual, model.generate(prompt, fp32_new, static="eager"),
                                                             sizes.prompt)
    result["fp32_new_tokens"] = fp32_new
    counters = torch._dynamo.utils.counters
    result["inductor_counters"] = {k: dict(v) for k, v in counters.items() if k in ("inductor", "stats")}
    # 0 on CUDA when every static step replayed as a CUDA graph (the CPU always skips them)
    result["cudagraph_skips"] = counters["inductor"].get("cudagraph_skips", 0)
    write(result)
    return result


TOP_KERNELS = 15
KINDS = (("attention", ("flash", "fmha", "attention", "cudnn")), ("matmul", ("gemm", "cutlass", "xmma", "sm90", "mm")),
         ("optimizer", ("adam", "multi_tensor", "foreach")), ("triton (fused pointwise/reductions)", ("triton",)))


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, marks in KINDS if any(m in name for m in marks)), "other")


def profile_top(step, device: str, steps: int = 3) -> dict:
    """torch.profiler over `steps` training steps: the top kernels by their own device time
    (CPU time in a dry run) and the shares of attention / matmul / optimizer / other."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    events = prof.key_averages()
    if device == "cuda":
        own = lambda e: getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))  # noqa: E731
        kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA] \
            or [e for e in events if own(e) > 0]  # (if this PyTorch lists no device-side events)
    else:
        kernels, own = list(events), lambda e: e.self_cpu_time_total  # noqa: E731
    total = sum(own(e) for e in kernels) or 1.0
    kernels.sort(key=own, reverse=True)
    shares: dict[str, float] = {}
    for e in kernels:
        shares[kind_of(e.key)] = shares.get(kind_of(e.key), 0.0) + own(e) / total
    return {"ms_per_step": total / 1000 / steps, "shares": shares,
            "top": [{"kernel": e.key[:120], "ms_per_step": own(e) / 1000 / steps, "share": own(e) / total}
                    for e in kernels[:TOP_KERNELS]]}


def train_variant(sizes: Sizes, peak: float, batch: int, mode: str | None = "default", backend: str | None = None,
                  profile: bool = False) -> dict:
    """Training steps of GPT-2 124M (bf16 autocast on CUDA, fused AdamW, gradient clipping),
    compiled with `mode` (None: eager) and SDPA limited to `backend` (None: PyTorch's choice)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    device = sizes.device
    torch.manual_seed(0)
    model = gpt2(sizes=sizes)
    T = model.block_size
    optimizer = model.configure_optimizers(CfgNode(learning_rate=6e-4, betas=(0.9, 0.95), weight_decay=0.1))
    step_model = model if mode is None else torch.compile(model, mode=None if mode == "default" else mode)
    x = torch.randint(sizes.vocab_size, (batch, T), device=device)
    y = torch.randint(sizes.vocab_size, (batch, T), device=device)

    def step():
        attention = sdpa_kernel(getattr(SDPBackend, backend)) if backend else nullcontext()
        with attention, torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            _, loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warmup_s, _ = wall(lambda: [step() for _ in range(3)], device)
    seconds = seconds_per_call(step, sizes.train_steps, device)
    tokens_per_s = batch * T / seconds
    row = {"batch": batch, "compile_mode": mode, "sdpa_backend": backend or "auto", "ms_per_iter": seconds * 1000,
           "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * model.flops_per_token() / peak if peak else None,
           "warmup_s": warmup_s}
    if device == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if profile:
        row["profile"] = profile_top(step, device)
    return row


def train_profile(sizes: Sizes, peak: float, write, autotune: bool = False) -> dict:
    """Issue 16's training section: the variants (see the module docstring), each row written as done."""
    result = {"rows": [], "fused_cross_entropy": "none in mingpt: the profile's head + loss kernels show its cost"}
    if autotune:
        variants = [dict(batch=sizes.train_batches[0], mode="max-autotune")]
    else:
        backends = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION") if sizes.device == "cuda" else ("MATH",)
        variants = [dict(batch=sizes.train_batches[0], profile=True)]
        variants += [dict(batch=b) for b in sizes.train_batches[1:]]
        variants += [dict(batch=sizes.train_batches[0], backend=b) for b in backends]
    for variant in variants:
        try:
            row = train_variant(sizes, peak, **variant)
        except Exception as error:  # e.g. a backend this card or shape does not support: say so, go on
            row = {**variant, "error": f"{type(error).__name__}: {str(error)[:300]}"}
        result["rows"].append(row)
        write(result)
        print(f"train {row.get('batch')} {row.get('compile_mode', variant.get('mode', 'default'))} "
              f"sdpa={row.get('sdpa_backend', variant.get('backend'))}: "
              + (f"{row['ms_per_iter']:.1f} ms/iter, {row['tokens_per_s']:,.0f} tok/s, MFU {row['mfu'] or 0:.1%}"
                 if "error" not in row else row["error"]), flush=True)
        if sizes.device == "cuda":
            torch.cuda.empty_cache()
    return result


def trainer_on_cuda(out_dir: str) -> dict:
    """The whole CUDA path through the CLI: train, checkpoint, resume, sample."""
    work_dir = os.path.join(out_dir, "chargpt")
    common = [sys.executable, "-m", "mingpt", "chargpt", f"--system.work_dir={work_dir}",
              "--trainer.progress_bar=False", "--trainer.eval_interval=100", "--sample.max_new_tokens=50"]
    runs = {}
    for name, extra in (("train", ["--trainer.max_iters=300"]),
                        ("resume", ["--trainer.max_iters=400", "--system.resume=True"])):
        t0 = time.time()
        result = subprocess.run(common + extra, capture_output=True, text=True)
        runs[name] = {"returncode": result.returncode, "seconds": time.time() - t0,
                      "stderr_tail": result.stderr[-600:]}
    sample = subprocess.run([sys.executable, "-m", "mingpt", "sample", f"--system.work_dir={work_dir}",
                             "--max_new_tokens=100", "--prompt=The "], capture_output=True, text=True)
    runs["sample"] = {"returncode": sample.returncode, "text": sample.stdout[:200], "stderr_tail": sample.stderr[-300:]}
    summary_file = os.path.join(work_dir, "summary.json")
    if os.path.exists(summary_file):
        runs["summary"] = json.load(open(summary_file))
    return runs


def local_attention(T: int, window: int = 256, batch: int = 8, repeats: int = 20) -> dict:
    """A GPT-3 local layer's attention on CUDA against a global one's, forward + backward."""
    import torch.nn.functional as F

    from mingpt.nn.kernels.banded import band_mask, banded_attention
    q, k, v = (torch.randn(batch, 12, T, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn_like(q)
    row = {"T": T, "window": window, "batch": batch}
    for name, attend in (("dense_ms", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
                         ("local_ms", lambda: banded_attention(q, k, v, window))):
        start = time.perf_counter()
        attend().backward(grad)  # (FlexAttention compiles here)
        torch.cuda.synchronize()
        row[name.replace("_ms", "_first_call_s")] = time.perf_counter() - start
        row[name] = 1000 * cuda_time(lambda: attend().backward(grad), repeats)
    with torch.no_grad():
        want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=band_mask(T, window, "cuda"))
        row["max_abs_diff_vs_masked_fp32"] = (banded_attention(q, k, v, window).float() - want).abs().max().item()
    row["speedup"] = row["dense_ms"] / row["local_ms"]
    return row


# section -> its time budget on an H200, seconds (the run stops starting sections at --budget-s)
SECTIONS = {"peak": 30, "decode": 240, "train_profile": 170, "local_attention": 60, "trainer_on_cuda": 100,
            "train_autotune": 200}
DRY_RUN_SLOWER = 5  # a dry run's sections may take this many times their budget (a CPU compiles slowly)
CUDA_ONLY = {"local_attention", "trainer_on_cuda", "train_autotune"}  # left out of a dry run


def run_section(name: str, sizes: Sizes, peak: float, part_out: str) -> None:
    """One section, in this process; its JSON is (re)written to part_out as it grows."""
    def write(data: dict) -> None:
        Path(part_out).write_text(json.dumps(data, indent=2, default=str))

    if sizes.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if name == "peak":
        write({"peak_tflops": matmul_peak(sizes.device) / 1e12, "device": torch.cuda.get_device_name()
               if sizes.device == "cuda" else "cpu", "torch": torch.__version__})
    elif name == "decode":
        decode_check(sizes, write)
    elif name in ("train_profile", "train_autotune"):
        train_profile(sizes, peak, write, autotune=name == "train_autotune")
    elif name == "local_attention":
        rows = []
        for T in (2048, 4096):
            rows.append(local_attention(T))
            write({"rows": rows})
    elif name == "trainer_on_cuda":
        write(trainer_on_cuda(os.environ.get("OUT", tempfile.mkdtemp())))


def run_in_child(name: str, args, peak: float, timeout: float, part_out: Path) -> dict:
    """Run one section in its own process group, killed (with its children) at the timeout."""
    command = [sys.executable, __file__, "--section", name, "--peak", str(peak), "--part-out", str(part_out)]
    command += ["--dry-run"] if args.dry_run else []
    start = time.time()
    child = subprocess.Popen(command, start_new_session=True)
    status = {}
    try:
        status["returncode"] = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, 9)
        child.wait()
        status["timed_out_after_s"] = timeout
    data = json.loads(part_out.read_text()) if part_out.exists() else {}
    return {**data, **status, "section_s": time.time() - start}


def summary_lines(result: dict) -> list[str]:
    lines = []
    for row in result.get("decode", {}).get("rows", []):
        hf = f", Hugging Face {row['hf_tokens_per_s']:,.0f}" if "hf_tokens_per_s" in row else ""
        hf += f" (static cache {row['hf_static_tokens_per_s']:,.0f})" if "hf_static_tokens_per_s" in row else ""
        pays = row["static_pays_from_tokens"]
        lines.append(f"decode greedy batch {row['batch']}: usual {row['usual_tokens_per_s']:,.0f} tok/s, static "
                     f"{row['static_tokens_per_s']:,.0f} tok/s (compile {row['static_compile_s']:.1f} s, pays from "
                     f"{'never' if pays is None else f'{pays:.0f} tokens'}){hf}; first differences "
                     f"{row['first_difference']}")
    for section in ("train_profile", "train_autotune"):
        for row in result.get(section, {}).get("rows", []):
            if row.get("mfu") is not None:
                lines.append(f"{section} batch {row['batch']} {row['compile_mode']} sdpa={row['sdpa_backend']}: "
                             f"{row['tokens_per_s']:,.0f} tok/s, MFU {row['mfu']:.1%}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    parser.add_argument("--dry-run", action="store_true", help="on the CPU with tiny sizes: a smoke test")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no section after this many seconds (default 480; a dry run 5x)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--section", help=argparse.SUPPRESS)  # (internal) run this one section here
    parser.add_argument("--peak", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--part-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = DRY if args.dry_run else FULL
    if args.budget_s is None:
        args.budget_s = 480.0 * (DRY_RUN_SLOWER if args.dry_run else 1)
    if args.section:
        return run_section(args.section, sizes, args.peak, args.part_out)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or pass --dry-run for the CPU smoke test")
    start, peak = time.time(), 0.0
    result = {"dry_run": args.dry_run, "budget_s": args.budget_s}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["peak"] + [s for s in args.sections if s != "peak"]:
            left = args.budget_s - (time.time() - start)
            if args.dry_run and name in CUDA_ONLY:
                result[name] = {"skipped": "needs CUDA"}
            elif left < 20:
                result[name] = {"skipped": f"out of time ({left:.0f} s left of {args.budget_s:.0f})"}
            else:
                timeout = min(SECTIONS[name] * (DRY_RUN_SLOWER if args.dry_run else 1), left)
                print(f"--- {name} (at most {timeout:.0f} s)", flush=True)
                result[name] = run_in_child(name, args, peak, timeout, Path(tmp) / f"{name}.json")
                if name == "peak" and "peak_tflops" in result[name]:
                    peak = result[name]["peak_tflops"] * 1e12
                    print(f"{result[name]['device']}, torch {result[name]['torch']}: matmul "
                          f"{result[name]['peak_tflops']:.2f} TFLOP/s", flush=True)
            Path(args.out).write_text(json.dumps(result, indent=2, default=str))  # what is done so far
    result["total_s"] = time.time() - start
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print("\n".join(summary_lines(result)))
    print(f"wrote {args.out} ({result['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
