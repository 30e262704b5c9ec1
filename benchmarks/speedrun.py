"""The CPU speedrun: wall time of the whole command to a Tiny Shakespeare char-level val loss.

    python benchmarks/speedrun.py          # ~10 minutes; prints tables, writes benchmarks/speedrun.json

Each run is the whole command a user types, timed from outside (start-up, data, training, every
evaluation over the whole validation split, checkpoints, the final sample):
    mingpt chargpt --data.input=../shared/data/tinyshakespeare.txt --recipe=R
        --trainer.target_val_loss=1.88 --trainer.eval_iters=None
1. --recipe=speedrun for each seed, and --recipe=gpt2 (the GPT-2 recipe) for the baseline seeds:
   seconds to the target (the run stops at the first evaluation at or below it), median and spread.
2. Ablation, one seed: the speedrun with one of its parts put back to GPT-2's (leave one out), at
   the same number of iterations: its val loss and seconds, beside the whole recipe's.
Runs go one after another (two cores: never two at once).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TARGET = 1.88
# each part of the speedrun recipe, and GPT-2's value that leaving it out puts back
PARTS = {
    "RoPE": ["--model.position_encoding=learned"],
    "RMSNorm": ["--model.norm=layernorm"],
    "QK-norm": ["--model.qk_norm=False"],
    "ReLU^2": ["--model.activation=gelu_tanh"],
    "no biases": ["--model.bias=True"],
    "untied head": ["--model.tie_embeddings=True"],
    "zero-init projections": ["--model.zero_init_projections=False"],
    "logit soft-cap": ["--model.logit_softcap=None"],
    "Muon": ["--trainer.optimizer=adamw"],
    "WSD": ["--trainer.lr_schedule=cosine"],
}


def run(recipe: str, seed: int, extra: list[str], work_dir: Path) -> dict:
    command = [sys.executable, "-m", "mingpt", "chargpt", f"--data.input={DATA}", f"--recipe={recipe}",
               f"--trainer.target_val_loss={TARGET}", "--trainer.eval_iters=None", f"--system.seed={seed}",
               "--trainer.progress_bar=False", f"--system.work_dir={work_dir}", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    summary = json.loads((work_dir / "summary.json").read_text())
    return {"recipe": recipe, "seed": seed, "extra": extra, "wall_s": wall,
            "reached": bool(summary.get("target_reached")), "target_iter": summary.get("target_iter"),
            "target_s": summary.get("target_s"), "val_loss": summary.get("val_loss"),
            "iters": summary.get("iters"), "stop_reason": summary.get("stop_reason")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="3407,1,2")
    parser.add_argument("--baseline-seeds", default="3407", help="seeds of the GPT-2 recipe (2 minutes each)")
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=str(Path(__file__).parent / "speedrun.json"))
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing: the speedrun needs Tiny Shakespeare there")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def go(recipe, seed, extra=(), name=""):
            row = run(recipe, seed, list(extra), Path(tmp) / f"{recipe}_{seed}_{len(rows)}")
            row["part_left_out"] = name
            rows.append(row)
            print(f"{recipe:9s} seed {seed:5d} {name or '':24s} val {row['val_loss']:.4f} "
                  f"{'reached' if row['reached'] else 'missed '} at iter {row['target_iter']}, "
                  f"whole command {row['wall_s']:.1f} s", flush=True)
        for seed in map(int, args.seeds.split(",")):
            go("speedrun", seed)
        for seed in map(int, args.baseline_seeds.split(",")):
            go("gpt2", seed)
        if args.ablation:
            first = int(args.seeds.split(",")[0])
            for name, extra in PARTS.items():
                go("speedrun", first, extra, name)
    speed = [r["wall_s"] for r in rows if r["recipe"] == "speedrun" and not r["part_left_out"]]
    base = [r["wall_s"] for r in rows if r["recipe"] == "gpt2"]
    result = {"cpu": platform.processor() or platform.machine(), "target": TARGET, "rows": rows,
              "speedrun_median_s": statistics.median(speed), "speedrun_spread_s": [min(speed), max(speed)],
              "gpt2_median_s": statistics.median(base),
              "speedrun_reached_all": all(r["reached"] for r in rows if r["recipe"] == "speedrun" and not r["part_left_out"])}
    result["ratio"] = result["gpt2_median_s"] / result["speedrun_median_s"]
    print(f"\nwhole command to val <= {TARGET}: speedrun median {result['speedrun_median_s']:.1f} s "
          f"({min(speed):.1f}..{max(speed):.1f}, {len(speed)} seeds), GPT-2 recipe {result['gpt2_median_s']:.1f} s: "
          f"{result['ratio']:.2f}x")
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
