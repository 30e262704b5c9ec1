"""Multi-GPU check (under 5 minutes): GPT-2 124M trained by the Trainer on every GPU of this
machine, under DDP and under FSDP2, in bf16; tokens/s and MFU per GPU.

    PYTHONPATH=. python3 benchmarks/multi_gpu_check.py --out multi_gpu_check.json
    PYTHONPATH=. python3 benchmarks/multi_gpu_check.py --cpu    # smoke test: 2 CPU processes, gloo, a tiny GPT

For each mode (DDP or FSDP2, eager or torch.compile'd) it starts itself under torchrun, one
process per GPU. Each process measures its GPU's bf16 matmul rate (gpu_check.matmul_peak, 8192^3),
then trains GPT-2 124M for 30 steps of 16 x 1024 random tokens per GPU (bf16 autocast; under FSDP2
the gathered weights are bf16 too). tokens/s per GPU is the job's rate over steps 11-30 (the first
10 hold the warm-up) divided by the GPUs; MFU = tokens/s per GPU x (6N + 12 L T C) / the matmul
rate. Prints a table and writes JSON; a mode that fails is reported and the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import gpt2, matmul_peak  # noqa: E402

from mingpt.data import TokenStream  # noqa: E402
from mingpt.model import GPT  # noqa: E402
from mingpt.trainer import Trainer  # noqa: E402
from mingpt.training import runtime  # noqa: E402

STEPS, WARMUP_STEPS = 30, 10


def tiny_gpt() -> GPT:
    """For the CPU smoke test: GPT-2's vocabulary and shape of config, 2 layers of 64 dims."""
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd = 2, 2, 64
    config.vocab_size, config.block_size, config.tie_embeddings = 50257, 64, True
    return GPT(config)


def worker(fsdp: bool, compile_model: bool, cpu: bool, out: Path) -> None:
    """One process of the job: measure the peak, train, and (rank 0) write the figures."""
    place = runtime.setup("cpu" if cpu else "cuda").place  # (sets this process's GPU, so the peak is measured on it)
    if cpu:
        torch.set_num_threads(1)
    device = "cpu" if cpu else "cuda"
    peak = matmul_peak(device)
    torch.manual_seed(0)
    model = tiny_gpt() if cpu else gpt2(device="cpu")  # the Trainer moves it, or shards it onto the GPUs
    flops = model.flops_per_token()
    tokens = torch.randint(model.config.vocab_size, (2_000_000,))
    c = Trainer.get_default_config()
    c.device, c.max_iters, c.log_interval, c.progress_bar = device, STEPS, WARMUP_STEPS, False
    c.batch_size, c.learning_rate, c.fsdp, c.compile = (4 if cpu else 16), 6e-4, fsdp, compile_model
    trainer = Trainer(c, model, TokenStream(tokens, model.config.block_size))
    trainer.run()
    steady = [row for row in trainer.metrics if row["iter"] > WARMUP_STEPS]
    per_gpu = statistics.mean(row["tokens_per_s"] for row in steady) / place.world_size
    if trainer.is_main:
        out.write_text(json.dumps({
            "mode": "FSDP2" if fsdp else "DDP", "compile": compile_model, "gpus": place.world_size,
            "dtype": trainer.run_config["resolved"]["dtype"], "batch_per_gpu": c.batch_size,
            "ms_per_iter": statistics.mean(row["ms"] for row in steady),
            "tokens_per_s_per_gpu": per_gpu, "mfu": per_gpu * flops / peak, "peak_tflops": peak / 1e12,
            "compile_s": trainer.summary.get("compile_s"), "final_loss": trainer.metrics[-1]["loss"],
            "peak_memory_gb": 0.0 if cpu else torch.cuda.max_memory_allocated() / 1e9}))


def launch(fsdp: bool, compile_model: bool, cpu: bool, processes: int, timeout: int) -> dict:
    """Run one mode under torchrun; its figures, or why it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", __file__, "--worker", f"--out={out}"]
        command += ["--fsdp"] * fsdp + ["--compile"] * compile_model + ["--cpu"] * cpu
        mode = {"mode": "FSDP2" if fsdp else "DDP", "compile": compile_model}
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {**mode, "error": f"timed out after {timeout} s"}
        if result.returncode != 0 or not out.exists():
            return {**mode, "error": f"exit {result.returncode}", "stderr_tail": result.stderr[-1500:]}
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "multi_gpu_check.json"))
    parser.add_argument("--cpu", action="store_true", help="smoke test: 2 CPU processes, a tiny GPT")
    parser.add_argument("--eager-only", action="store_true", help="skip the torch.compile'd modes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fsdp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.fsdp, args.compile, args.cpu, Path(args.out))
        return
    processes = 2 if args.cpu else torch.cuda.device_count()
    if processes == 0:
        sys.exit("no GPU here: run with --cpu for the smoke test")
    compiled = (False,) if args.cpu or args.eager_only else (False, True)
    result = {"device": "cpu" if args.cpu else torch.cuda.get_device_name(), "torch": torch.__version__,
              "processes": processes, "rows": []}
    print(f"{result['device']} x {processes}, torch {result['torch']}", flush=True)
    for fsdp in (False, True):
        for compile_model in compiled:
            row = launch(fsdp, compile_model, args.cpu, processes, timeout=120)
            result["rows"].append(row)
            name = f"{row['mode']:5s} {'compile' if compile_model else 'eager  '}"
            if "error" in row:
                print(f"{name}: FAILED ({row['error']})\n{row.get('stderr_tail', '')}", flush=True)
                continue
            print(f"{name} {row['dtype']}: {row['ms_per_iter']:.1f} ms/iter, {row['tokens_per_s_per_gpu']:,.0f} "
                  f"tok/s per GPU, MFU {row['mfu']:.1%} of {row['peak_tflops']:.3g} TFLOP/s measured "
                  f"(loss {row['final_loss']:.2f}, {row['peak_memory_gb']:.1f} GB)", flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
