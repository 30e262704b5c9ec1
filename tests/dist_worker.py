"""Runs under torchrun for tests/test_distributed.py: trains tiny GPTs as one job of 2 CPU processes
(gloo) and leaves the results in OUT for the tests to compare with single-process runs.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py OUT

The tests build their single-process runs with the same tiny_run() (helpers.py), so only the
number of processes differs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_model

from helpers import BATCH, MODEL_OPTIONS, STEPS, tiny_run
from mingpt import distributed
from mingpt.utils import env_rank


def overflow_in_one_shard() -> list[tuple[bool, float]] | None:
    """FSDP2 in fp16 with an inf planted in rank 1's gradient shard only: (did the rank skip the
    step, its loss scale after it), on rank 0 for every rank."""
    trainer = tiny_run(fsdp=True, dtype="fp16", max_iters=1)
    trainer.run()
    model, scaler, optimizer = trainer.model, trainer.scaler, trainer.optimizer
    model.reshard()  # (an evaluation's forward leaves the root's weights gathered)
    before = [p.detach().to_local().clone() for p in model.parameters()]
    x = torch.arange(16)[None] % 7
    with trainer.autocast():
        _, loss = model(x, x)
    scaler.scale(loss).backward()
    if trainer.place.rank == 1:
        next(model.parameters()).grad.to_local().view(-1)[0] = float("inf")
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    skipped = all(torch.equal(a, p.detach().to_local()) for a, p in zip(before, model.parameters()))
    return distributed.gather((skipped, scaler.get_scale()))


def stopping(out: Path) -> None:
    """Rank 1 alone runs out of time (its max_seconds is tiny, rank 0's a day): every rank must
    stop after the same iteration, or rank 0 would wait for rank 1 at its next collective."""
    trainer = tiny_run(max_iters=1000, max_seconds=1e-6 if env_rank() == 1 else 86400.0)
    trainer.run()
    stops = distributed.gather([trainer.iter_num, trainer.stop_reason])
    if trainer.is_main:
        (out / "stopping.json").write_text(json.dumps(stops))


def main(out: Path, scenario: str | None = None) -> None:
    torch.set_num_threads(1)
    if scenario == "stopping":  # (on its own: a quick job)
        stopping(out)
        return
    runs = {"ddp": {}, "ddp_accum": {"batch_size": BATCH // 2, "grad_accum_steps": 2}}
    for name, overrides in runs.items():
        trainer = tiny_run(**overrides)
        trainer.run()
        if trainer.is_main:
            save_model(trainer.model, str(out / f"{name}.safetensors"))
    tiny_run(out / "fsdp", fsdp=True).run()  # checkpoints at 3 and 6
    tiny_run(out / "fsdp_resumed", fsdp=True, max_iters=STEPS // 2).run()
    tiny_run(out / "fsdp_resumed", resume=True, fsdp=True).run()
    tiny_run(out / "fsdp_bf16", fsdp=True, dtype="bf16").run()
    tiny_run(out / "fsdp_options", fsdp=True, model_options=MODEL_OPTIONS).run()
    trainer = tiny_run(model_options=MODEL_OPTIONS)
    trainer.run()
    if trainer.is_main:
        save_model(trainer.model, str(out / "ddp_options.safetensors"))
    overflow = overflow_in_one_shard()
    if overflow is not None:
        (out / "fp16_overflow.json").write_text(json.dumps(overflow))


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
