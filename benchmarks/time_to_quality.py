"""Benchmark: how long the chargpt recipe takes to reach a validation loss (default 1.88).

    python benchmarks/time_to_quality.py [--text PATH] [--target 1.88] [--eval_interval 100]

Trains `mingpt chargpt` on Tiny Shakespeare (4/4/128, block 64, batch 12, lr 1e-3, 2000
iterations), validating on the whole validation split every eval_interval iterations, and reports
the first evaluation at or below the target: the iteration, the training time up to it (without
evaluation) and the wall time (with it). Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--eval_interval", type=int, default=100)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "time_to_quality.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "mingpt", "chargpt", f"--data.input={args.text}",
                        f"--system.work_dir={tmp}/run", f"--trainer.eval_interval={args.eval_interval}",
                        "--trainer.progress_bar=False", "--sample.max_new_tokens=0"], check=True)
        rows = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    train_s, previous, evals = 0.0, 0, []
    for row in rows:
        train_s += row["ms"] * (row["iter"] - previous) / 1000
        previous = row["iter"]
        if "val_loss" in row:
            evals.append({"iter": row["iter"], "val_loss": row["val_loss"], "train_s": train_s,
                          "wall_s": row["elapsed_s"]})
    reached = next((e for e in evals if e["val_loss"] <= args.target), None)
    print(f"{'iter':>6s} {'val loss':>9s} {'train s':>8s} {'wall s':>7s}")
    for e in evals:
        mark = "  <- first at or below the target" if e is reached else ""
        print(f"{e['iter']:6d} {e['val_loss']:9.4f} {e['train_s']:8.1f} {e['wall_s']:7.1f}{mark}")
    print(f"target {args.target}: " + (f"reached at iteration {reached['iter']}, {reached['train_s']:.1f} s "
                                       f"of training, {reached['wall_s']:.1f} s wall" if reached else "not reached"))
    Path(args.json).write_text(json.dumps({"target": args.target, "reached": reached, "evals": evals}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
