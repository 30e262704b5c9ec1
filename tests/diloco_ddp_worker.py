"""Runs under torchrun for tests/test_diloco.py: one DiLoCo worker of several processes (DDP
inside it), the real `mingpt JOB ...` command, watched from inside each process.

    TORCHFT_LIGHTHOUSE=... REPLICA_GROUP_ID=i python -m torch.distributed.run --standalone \
        --nproc_per_node=2 tests/diloco_ddp_worker.py OUT JOB --section.key=value ...

It changes nothing the job does; it only records, per process, in OUT/<worker>-<rank>.*:
- .safetensors: the model's weights when the training ends (the test compares every process's);
- .json: the strategy's counters, its manager's own byte count, and every path under the job's
  --system.work_dir this process created, wrote, renamed or removed (an audit hook sees Python's
  opens and os calls), so the test can tell which process wrote which files.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

WRITING_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.copyfile"}


def main(out: Path, args: list[str]) -> int:
    torch.set_num_threads(1)
    worker, rank = os.environ["REPLICA_GROUP_ID"], os.environ["RANK"]
    work_dir = next(Path(a.split("=", 1)[1]).resolve() for a in args if a.startswith("--system.work_dir="))
    written: set[str] = set()

    def under_work_dir(path: object) -> str | None:
        try:
            resolved = Path(os.fsdecode(path)).resolve()
        except (TypeError, ValueError):
            return None
        return str(resolved) if resolved.is_relative_to(work_dir) else None

    def audit(event: str, event_args: tuple) -> None:
        if event == "open" and len(event_args) >= 2 and isinstance(event_args[1], str) \
                and any(m in event_args[1] for m in "wax+"):
            paths = event_args[:1]
        elif event in WRITING_EVENTS:
            paths = event_args[:2]
        else:
            return
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)) and (found := under_work_dir(path)):
                written.add(found)

    sys.addaudithook(audit)

    from mingpt import cli
    from mingpt.trainer import Trainer

    run = Trainer.run

    def recording_run(trainer: Trainer) -> dict:
        summary = run(trainer)
        prefix = out / f"{worker}-{rank}"
        save_file({k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()},
                  str(prefix) + ".safetensors")
        strategy = trainer.strategy
        prefix.with_suffix(".json").write_text(json.dumps({
            "counters": strategy.counters(trainer.iter_num),
            "manager_comm_bytes": strategy.manager.comm_bytes,
            "inner": strategy.inner.name, "written": sorted(written)}))
        return summary

    Trainer.run = recording_run
    status = cli.main(args)
    record = out / f"{worker}-{rank}.json"  # (the paths written after training too: summary, sample)
    if record.exists():
        saved = json.loads(record.read_text())
        saved["written"] = sorted(written)
        record.write_text(json.dumps(saved))
    return status


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
