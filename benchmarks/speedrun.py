"""The CPU speedrun: wall time of the whole command to a Tiny Shakespeare char-level val loss.

    python benchmarks/speedrun.py                    # everything: ~35 minutes on a quiet 2-core CPU
    python benchmarks/speedrun.py --ablation=none    # the seeds and the baseline only: ~5 minutes
    python benchmarks/speedrun.py --ablation=alone --parts=RoPE,Muon --seeds= --baseline-seeds=
Each prints its rows as they come and writes benchmarks/speedrun.json (--out) after every row.

Each run is the whole command a user types, timed from outside (start-up, data, training, every
evaluation over the whole validation split, checkpoints, the final sample):
    mingpt chargpt --data.input=../shared/data/tinyshakespeare.txt --recipe=R
        --trainer.target_val_loss=1.88 --trainer.eval_iters=None
1. --recipe=speedrun for each seed, and --recipe=gpt2 (the GPT-2 recipe) for the baseline seeds:
   seconds to the target (the run stops at the first evaluation at or below it), median and spread.
2. Leave one out (--ablation=out), one seed: the speedrun with one of its parts put back to
   GPT-2's, at the same number of iterations: its val loss and seconds, beside the whole recipe's.
3. Each part alone (--ablation=alone), one seed: the GPT-2 recipe with only that part of the
   speedrun's, evaluated every ALONE_EVAL_INTERVAL iterations: iterations and seconds to the target.
Runs go one after another (two cores: never two at once).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mingpt.jobs import recipes  # noqa: E402
from mingpt.utils import cpu_multiplies_bf16  # noqa: E402

from decode import cpu_name  # noqa: E402  (benchmarks/decode.py, beside this script)

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TARGET = 1.88
# the speedrun recipe's parts, each as the keys it sets (their values are the recipe's); leaving a
# part out puts back the GPT-2 values given here, chargpt's defaults
PARTS = {
    "3 layers (of 4)": {"model.model_type": "gpt-micro", "model.n_layer": None, "model.n_head": None,
                        "model.n_embd": None},
    "RoPE": {"model.position_encoding": "learned"},
    "RMSNorm": {"model.norm": "layernorm"},
    "QK-norm": {"model.qk_norm": False},
    "ReLU^2": {"model.activation": "gelu_tanh"},
    "no biases": {"model.bias": True},
    "untied head": {"model.tie_embeddings": True},
    "zero-init projections": {"model.zero_init_projections": False},
    "logit soft-cap": {"model.logit_softcap": None},
    "bf16 (where native)": {"trainer.dtype": "auto"},
    "Muon": {"trainer.optimizer": "adamw", "trainer.muon_ns_dtype": "auto",
             "trainer.muon_momentum_warmup_iters": 300},
    "WSD": {"trainer.lr_schedule": "cosine", "trainer.cooldown_fraction": 0.2, "trainer.min_lr_ratio": 0.3},
}
ALONE_EVAL_INTERVAL = 100  # the GPT-2 recipe evaluates every 250: too coarse to tell the parts apart


def flags(settings: dict) -> list[str]:
    return [f"--{key}={value}" for key, value in settings.items()]


def left_out(part: str) -> list[str]:
    """The speedrun with `part` put back to GPT-2's."""
    return flags(PARTS[part])


def alone(part: str) -> list[str]:
    """The GPT-2 recipe with only `part` of the speedrun's, evaluated every ALONE_EVAL_INTERVAL."""
    recipe = recipes.RECIPES["speedrun"].overrides
    return flags({key: recipe[key] for key in PARTS[part]}) + [f"--trainer.eval_interval={ALONE_EVAL_INTERVAL}"]


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
    parser.add_argument("--ablation", default="out,alone",
                        help="out (leave one out), alone (each part alone on the GPT-2 recipe), both, or none")
    parser.add_argument("--alone-baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="with --ablation=alone: also the GPT-2 recipe evaluated as often as the parts alone")
    parser.add_argument("--ablation-seed", type=int, default=None, help="the ablation's seed (default: the first of --seeds)")
    parser.add_argument("--parts", default=",".join(PARTS), help="the parts to ablate, in this order")
    parser.add_argument("--out", default=str(Path(__file__).parent / "speedrun.json"))
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing: the speedrun needs Tiny Shakespeare there")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        def go(recipe, seed, extra=(), name=""):
            row = run(recipe, seed, list(extra), Path(tmp) / f"{recipe}_{seed}_{len(rows)}")
            row["ablation"] = name
            rows.append(row)
            print(f"{recipe:9s} seed {seed:5d} {name or '':24s} val {row['val_loss']:.4f} "
                  f"{'reached' if row['reached'] else 'missed '} at iter {row['target_iter']}, "
                  f"whole command {row['wall_s']:.1f} s", flush=True)
            Path(args.out).write_text(json.dumps(summarize(rows), indent=2))  # (after every row: a long run)

        for seed in seeds(args.seeds):
            go("speedrun", seed)
        for seed in seeds(args.baseline_seeds):
            go("gpt2", seed)
        ablations = {"both": {"out", "alone"}, "none": set()}.get(args.ablation, set(args.ablation.split(",")))
        first = args.ablation_seed if args.ablation_seed is not None else (seeds(args.seeds) or [3407])[0]
        parts = [part for part in args.parts.split(",") if part]
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise SystemExit(f"unknown parts {sorted(unknown)}; the parts are: {', '.join(PARTS)}")
        if "out" in ablations:
            for part in parts:
                go("speedrun", first, left_out(part), f"without {part}")
        if "alone" in ablations:
            if args.alone_baseline:
                go("gpt2", first, [f"--trainer.eval_interval={ALONE_EVAL_INTERVAL}"], "GPT-2, evaluated often")
            for part in parts:
                go("gpt2", first, alone(part), f"with {part}")
    result = summarize(rows)
    if "ratio" in result:
        speed = result["speedrun_spread_s"]
        print(f"\nwhole command to val <= {TARGET}: speedrun median {result['speedrun_median_s']:.1f} s "
              f"({speed[0]:.1f}..{speed[1]:.1f}, {result['speedrun_seeds']} seeds), GPT-2 recipe "
              f"{result['gpt2_median_s']:.1f} s: {result['ratio']:.2f}x")
    print(f"wrote {args.out}")


def seeds(text: str) -> list[int]:
    return [int(seed) for seed in text.split(",") if seed]


def summarize(rows: list[dict]) -> dict:
    """The rows, and the speedrun's median time against the GPT-2 recipe's where both ran."""
    result = {"cpu": f"{cpu_name()}, {os.cpu_count()} cores", "cpu_multiplies_bf16": cpu_multiplies_bf16(), "target": TARGET, "rows": rows}
    speed = [r["wall_s"] for r in rows if r["recipe"] == "speedrun" and not r["ablation"]]
    base = [r["wall_s"] for r in rows if r["recipe"] == "gpt2" and not r["ablation"]]
    if speed and base:
        result.update(speedrun_median_s=statistics.median(speed), speedrun_spread_s=[min(speed), max(speed)],
                      speedrun_seeds=len(speed), gpt2_median_s=statistics.median(base),
                      speedrun_reached_all=all(r["reached"] for r in rows
                                               if r["recipe"] == "speedrun" and not r["ablation"]))
        result["ratio"] = result["gpt2_median_s"] / result["speedrun_median_s"]
    return result

if __name__ == "__main__":
    main()
