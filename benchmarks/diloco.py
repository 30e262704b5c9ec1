"""DiLoCo against DDP on this machine: the same model, data, iterations and tokens, and what each
sends over the network.

    python benchmarks/diloco.py              # ~10-20 minutes on 2 cores; prints a table, writes benchmarks/diloco.json
    python benchmarks/diloco.py --iters=100  # a quick look

Every run is the whole command a user types, one after another (never two at once):
    DDP     torchrun --standalone --nproc_per_node=2 -m mingpt chargpt ...      (2 ranks x batch b)
    DiLoCo  mingpt diloco --workers=2 chargpt ... --diloco.sync_every=H        (2 workers x batch b)
on char-level Tiny Shakespeare (../shared/data/tinyshakespeare.txt), gpt-micro, block 64, b = 12
examples per rank or worker, one torch thread per process; val loss on 40 fixed batches of the
validation split every 100 iterations (the same batches in every run). comm_bytes is what rank 0 / worker 0
sent: DDP's gradient all-reduces and DiLoCo's outer-gradient exchanges, each counted as its
algorithm sends (a ring all-reduce: 2(n-1)/n x bytes; a packed all-gather: (n-1) x packed bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
RUNS = [  # (name, DiLoCo overrides; None: DDP)
    ("DDP", None),
    ("DiLoCo H=20 fp32", ["--diloco.sync_every=20"]),
    ("DiLoCo H=20 bf16", ["--diloco.sync_every=20", "--diloco.packing=bf16"]),
    ("DiLoCo H=20 int8", ["--diloco.sync_every=20", "--diloco.packing=int8"]),
    ("DiLoCo H=50 fp32", ["--diloco.sync_every=50"]),
    ("DiLoCo H=100 fp32", ["--diloco.sync_every=100"]),
]


def job_args(iters: int, work_dir: Path) -> list[str]:
    return ["chargpt", f"--data.input={DATA}", f"--system.work_dir={work_dir}", "--trainer.device=cpu",
            f"--trainer.max_iters={iters}", "--trainer.eval_interval=100", "--trainer.eval_iters=40",
            "--trainer.batch_size=12", "--sample.max_new_tokens=0", "--trainer.progress_bar=False"]


def run(name: str, diloco: list[str] | None, iters: int, work_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RUST_LOG": "warn", "PYTHONPATH": str(ROOT)}
    if diloco is None:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "mingpt", *job_args(iters, work_dir)]
    else:
        command = [sys.executable, "-m", "mingpt", "diloco", "--workers=2", *job_args(iters, work_dir),
                   "--diloco.min_workers=2", *diloco]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    summary = json.loads((work_dir / "summary.json").read_text())
    return {"name": name, "command": " ".join(command[1:]), "best_val_loss": summary["val_loss"],
            "comm_bytes": summary["comm_bytes"], "syncs": summary["syncs"], "iters": summary["iters"],
            "ms_per_iter": summary["ms_per_iter"], "command_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "diloco.json"))
    args = parser.parse_args()
    chosen = [r for r in RUNS if not args.only or r[0] in args.only.split(",")]
    # runs of the same length already in --out are kept (the others replaced): --only adds to them
    out = Path(args.out)
    earlier = json.loads(out.read_text()) if out.exists() else {}
    kept = [r for r in earlier.get("runs", []) if earlier.get("iters") == args.iters
            and r["name"] not in {name for name, _ in chosen}]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, (name, diloco) in enumerate(chosen):
            rows.append(run(name, diloco, args.iters, Path(scratch) / str(i)))
            print(f"done: {rows[-1]['name']}: val {rows[-1]['best_val_loss']:.4f}", file=sys.stderr, flush=True)
    rows = sorted(kept + rows, key=lambda r: [name for name, _ in RUNS].index(r["name"]))
    ddp = next((r for r in rows if r["name"] == "DDP"), None)
    print(f"\n{args.iters} iterations, 2 processes x batch 12 x block 64, gpt-micro, char Tiny Shakespeare\n")
    print(f"{'run':20s} {'best val':>9s} {'vs DDP':>7s} {'comm_bytes':>14s} {'DDP / it':>9s} {'syncs':>6s} "
          f"{'ms/iter':>8s} {'command s':>10s}")
    for r in rows:
        if ddp:
            r["val_vs_ddp"] = r["best_val_loss"] / ddp["best_val_loss"] - 1
            r["bytes_cut"] = ddp["comm_bytes"] / max(r["comm_bytes"], 1)
        print(f"{r['name']:20s} {r['best_val_loss']:9.4f} {r.get('val_vs_ddp', 0):+7.2%} {r['comm_bytes']:14,d} "
              f"{r.get('bytes_cut', 1):8.1f}x {r['syncs']:6d} {r['ms_per_iter']:8.1f} {r['command_s'] or 0:10.1f}")
    result = {"iters": args.iters, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "runs": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
