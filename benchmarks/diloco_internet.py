"""DDP against DiLoCo over internet links, simulated from measured figures: wall time per step and
compute utilisation for GPT-2 124M, 1.3B and 10B, 8 workers, links of 10 Mbit/s to 10 Gbit/s.

    python benchmarks/diloco_internet.py     # instant; prints tables, writes benchmarks/diloco_internet.json

What is measured, and where:
- the compute time of one step: GPT-2 124M on one H200, batch 16 x 1024 tokens, torch.compile,
  bf16 (benchmarks/gpu_check_h200.json: 35.6 ms, 48.8% MFU). Larger models are scaled by their
  6N FLOPs per token at that MFU and the same tokens per step (an assumption, stated: a 10B model
  does not train on one H200, so read its worker as a node that runs at that MFU per GPU-equivalent);
- the bytes a worker sends per exchange, per parameter: DiLoCo's counts from the CPU runs
  (benchmarks/diloco.json: comm_bytes / syncs against DDP's comm_bytes / steps), which follow
  the ring formula 2(n-1)/n x bytes per parameter x N (fp32 4, bf16 2, int8 1).
The link model: a ring exchange of n workers takes 2(n-1) hops of latency (50 ms, a transatlantic
round trip) plus 2(n-1)/n x S x 8 / bandwidth. DDP overlaps its all-reduce with backward (its
step is the longer of the two, the best case for DDP); DiLoCo does not overlap (H steps, then the
sync: the worst case for it; streaming fragments with a delay would hide part of it).
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKERS, LATENCY_S = 8, 0.050
LINKS = {"10 Mbit/s": 10e6, "100 Mbit/s": 100e6, "1 Gbit/s": 1e9, "10 Gbit/s": 10e9}
MODELS = {"124M": 124e6, "1.3B": 1.3e9, "10B": 10e9}
SCHEMES = [("DDP fp32", 1, "fp32"), ("DiLoCo H=100 fp32", 100, "fp32"), ("DiLoCo H=100 bf16", 100, "bf16"),
           ("DiLoCo H=500 bf16", 500, "bf16"), ("DiLoCo H=500 int8", 500, "int8")]
FORMULA = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0}  # bytes per parameter on the wire


def bytes_per_parameter() -> dict[str, float]:
    """Per packing, the bytes per parameter of one exchange, from the CPU runs: a DiLoCo run's
    bytes per sync against DDP's bytes per step (4 bytes per parameter), x 4."""
    path = HERE / "diloco.json"
    if not path.exists():
        return dict(FORMULA)
    runs = json.loads(path.read_text())["runs"]
    ddp = next(r for r in runs if r["name"] == "DDP")
    per_step = ddp["comm_bytes"] / ddp["iters"]
    found = dict(FORMULA)
    for packing in FORMULA:
        run = next((r for r in runs if r["name"].endswith(packing) and r["syncs"]), None)
        if run:
            found[packing] = 4.0 * run["comm_bytes"] / run["syncs"] / per_step
    return found


def exchange_s(params: float, bytes_per_param: float, bandwidth: float, n: int = WORKERS,
               latency_s: float = LATENCY_S) -> float:
    """The model's time of one ring exchange (benchmarks/diloco_netns.py checks it on a real link)."""
    return 2 * (n - 1) * latency_s + 2 * (n - 1) / n * params * bytes_per_param * 8 / bandwidth


def step_s(compute_s: float, h: int, sync_s: float) -> float:
    """The model's wall time of one step: DDP (h=1) overlaps its all-reduce with compute, DiLoCo
    adds one unoverlapped exchange every h steps."""
    return max(compute_s, sync_s) if h == 1 else (h * compute_s + sync_s) / h


def main() -> None:
    gpu = json.loads((HERE / "gpu_check_h200.json").read_text())
    measured = next(t for t in gpu["train"] if t["compile"])
    tokens_per_step = measured["batch"] * 1024
    step_124m = measured["ms_per_iter"] / 1000
    wire = bytes_per_parameter()
    rows = []
    for model, params in MODELS.items():
        step = step_124m * params / MODELS["124M"]  # same MFU, 6N FLOPs per token
        for link, bandwidth in LINKS.items():
            for scheme, h, packing in SCHEMES:
                b = wire[packing]
                sync = exchange_s(params, b, bandwidth)
                wall = step_s(step, h, sync)
                rows.append({"model": model, "link": link, "scheme": scheme, "H": h, "compute_s_per_step": step,
                             "wall_s_per_step": wall, "utilisation": step / wall,
                             "bytes_per_step": 2 * (WORKERS - 1) / WORKERS * params * b / h})
    print("bytes per parameter on the wire, measured: " + ", ".join(f"{k} {v:.3f}" for k, v in wire.items()))
    print(f"{WORKERS} workers, {LATENCY_S * 1000:.0f} ms latency, {tokens_per_step:,} tokens per worker-step; "
          f"compute from the H200's measured {measured['ms_per_iter']:.1f} ms for 124M\n")
    for model in MODELS:
        print(f"{model}: compute utilisation (wall s per step)")
        print(f"  {'scheme':20s}" + "".join(f"{link:>22s}" for link in LINKS))
        for scheme, _, _ in SCHEMES:
            cells = [r for r in rows if r["model"] == model and r["scheme"] == scheme]
            print(f"  {scheme:20s}" + "".join(f"{r['utilisation']:>12.1%} ({r['wall_s_per_step']:7.2f})" for r in cells))
        ddp = next(r for r in rows if r["model"] == model and r["scheme"] == "DDP fp32")["bytes_per_step"]
        cuts = ", ".join(f"{s} {ddp / next(r for r in rows if r['model'] == model and r['scheme'] == s)['bytes_per_step']:.0f}x"
                         for s, h, _ in SCHEMES if h > 1)
        print(f"  bytes per step cut against DDP: {cuts}\n")
    (HERE / "diloco_internet.json").write_text(json.dumps({"workers": WORKERS, "latency_s": LATENCY_S,
                                                            "tokens_per_step": tokens_per_step,
                                                            "bytes_per_parameter": wire, "rows": rows},
                                                           indent=2) + "\n")


if __name__ == "__main__":
    main()
