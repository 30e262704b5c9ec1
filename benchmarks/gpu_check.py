"""GPU check (under 5 minutes on one GPU): GPT-2 124M training MFU and generation speed, and the
Trainer's CUDA path end to end.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out gpu_check.json

1. peak: an 8192^3 bf16 matmul, timed with CUDA events (the MFU denominator, measured here).
2. training: GPT-2 124M (12/12/768, block 1024), batch 16, bf16 autocast, fused AdamW, SDPA
   (flash attention), eager and torch.compile'd; MFU = tokens/s * FLOPs/token / peak, with
   FLOPs/token = 6 N + 12 L T C (N: parameters without the position embedding; PaLM appendix B).
3. generation: 500 new tokens greedy at batch 1 (and 8) from a 16-token prompt, bf16 weights,
   with the KV cache and without it.
4. the Trainer on CUDA: `mingpt chargpt` (device auto), resumed, then `mingpt sample`.
5. local (banded) attention, window 256, fwd+bwd in bf16 at T = 2048 and 4096: FlexAttention
   with the band's block mask (mingpt.kernels.banded) against dense causal SDPA, and its largest
   difference from the masked reference.
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


def gpt2(block_size: int = 1024, device: str = "cuda") -> GPT:
    config = GPT.get_default_config()
    config.model_type, config.vocab_size, config.block_size = "gpt2", 50257, block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = 0.0
    config.tie_embeddings = True  # GPT-2's 124M
    return GPT(config).to(device)


def train_speed(compile_model: bool, peak: float, batch: int = 16, steps: int = 20) -> dict:
    torch.manual_seed(0)
    model = gpt2()
    optimizer = model.configure_optimizers(CfgNode(learning_rate=6e-4, betas=(0.9, 0.95), weight_decay=0.1))
    step_model = torch.compile(model) if compile_model else model
    x = torch.randint(50257, (batch, 1024), device="cuda")
    y = torch.randint(50257, (batch, 1024), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t0 = time.time()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    warmup_s = time.time() - t0
    seconds = cuda_time(step, steps)
    tokens_per_s = batch * 1024 / seconds
    return {"compile": compile_model, "batch": batch, "ms_per_iter": seconds * 1000,
            "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * model.flops_per_token() / peak,
            "warmup_s": warmup_s, "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9}


@torch.no_grad()
def generation_speed(batch: int, use_cache: bool, new_tokens: int = 500) -> dict:
    torch.manual_seed(0)
    model = gpt2().to(torch.bfloat16).eval()
    prompt = torch.randint(50257, (batch, 16), device="cuda")
    model.generate(prompt, 8, use_cache=use_cache)  # warm-up
    torch.cuda.synchronize()
    t0 = time.time()
    out = model.generate(prompt, new_tokens, use_cache=use_cache)
    torch.cuda.synchronize()
    seconds = time.time() - t0
    assert out.shape == (batch, 16 + new_tokens)
    return {"batch": batch, "cache": use_cache, "new_tokens": new_tokens,
            "tokens_per_s": batch * new_tokens / seconds, "seconds": seconds}


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

    from mingpt.kernels.banded import band_mask, banded_attention
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    result["peak_bf16_tflops"] = matmul_peak() / 1e12
    peak = result["peak_bf16_tflops"] * 1e12
    print(f"{result['device']}, torch {result['torch']}: bf16 matmul {result['peak_bf16_tflops']:.0f} TFLOP/s", flush=True)
    result["train"] = []
    for compile_model in (False, True):
        row = train_speed(compile_model, peak)
        result["train"].append(row)
        print(f"train GPT-2 124M b16 T1024 bf16 {'compile' if compile_model else 'eager  '}: "
              f"{row['ms_per_iter']:.1f} ms/iter, {row['tokens_per_s']:,.0f} tok/s, MFU {row['mfu']:.1%} "
              f"(warm-up {row['warmup_s']:.1f} s, {row['peak_memory_gb']:.1f} GB)", flush=True)
        torch.cuda.empty_cache()
    result["generate"] = []
    for batch, cache in ((1, True), (1, False), (8, True)):
        row = generation_speed(batch, cache)
        result["generate"].append(row)
        print(f"generate 500 tokens, batch {batch}, {'KV cache' if cache else 'no cache'}: "
              f"{row['tokens_per_s']:,.0f} tok/s", flush=True)
    result["local_attention"] = []
    for T in (2048, 4096):
        row = local_attention(T)
        result["local_attention"].append(row)
        print(f"attention fwd+bwd bf16, 8 x 12 heads x 64, T={T}: dense causal {row['dense_ms']:.2f} ms, "
              f"local (window 256) {row['local_ms']:.2f} ms, {row['speedup']:.2f}x; "
              f"max diff vs fp32 masked {row['max_abs_diff_vs_masked_fp32']:.1e}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result["trainer_on_cuda"] = trainer_on_cuda(os.environ.get("OUT", tmp))
    for name, run in result["trainer_on_cuda"].items():
        if name != "summary":
            print(f"mingpt {name} on CUDA: exit {run['returncode']}", flush=True)
    print(json.dumps(result["trainer_on_cuda"].get("summary", {})))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
