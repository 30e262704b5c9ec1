"""A DiLoCo group on this machine, for trying it and for tests: `mingpt diloco`.

    mingpt diloco --workers=2 chargpt --diloco.sync_every=20 --data.input=shakespeare
    mingpt diloco --workers=3 train --data.dir=out/data --diloco.sync_every=50 --diloco.packing=bf16

It starts a torchft lighthouse in this process and N workers, each an ordinary training job with
TORCHFT_LIGHTHOUSE and REPLICA_GROUP_ID=i in its environment and cores // N torch threads, logging
to <work_dir>/workers/<i>/worker.log. It shows their progress, and Ctrl-C or SIGTERM stops them
all (each saves a checkpoint: run the same command with --system.resume=true to go on). On many
machines, start the lighthouse and each worker yourself (README, "Training across machines").
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from mingpt.cli import JOBS, take_recipe
from mingpt.distributed import diloco
from mingpt.training.run_folder import RunFolder
from mingpt.utils import CfgNode, ConfigError, Setting, setup_logging

log = logging.getLogger(__name__)

TRAINING_JOBS = ("chargpt", "train", "words")
USAGE = ("usage: mingpt diloco [--workers=N] [--port=P] [--join_timeout_s=S] [--heartbeat_timeout_s=S] "
         "JOB [--section.key=value ...]\n  JOB: one of " + ", ".join(TRAINING_JOBS) + "; its overrides must set "
         "--diloco.sync_every=H (and may set the rest of its diloco section: `mingpt JOB --help`)")


def get_config() -> CfgNode:
    """The launcher's own settings (before JOB on the command line)."""
    return CfgNode(
        workers=Setting(2, min=1),
        port=Setting(0, min=0, max=65535),  # the lighthouse's port (0: any free one)
        join_timeout_s=Setting(10.0, above=0),  # how long a quorum waits for workers of the last one that are missing
        heartbeat_timeout_s=Setting(2.0, above=0),  # a worker silent this long is taken for dead
    )


def split_args(args: list[str]) -> tuple[list[str], str, list[str]]:
    """(the launcher's args, JOB, the job's args)."""
    for i, arg in enumerate(args):
        if not arg.startswith("-"):
            return args[:i], arg, args[i + 1:]
    raise ConfigError(f"mingpt diloco needs a training job to run; {USAGE}")


def job_config(job: str, args: list[str]) -> CfgNode:
    """The job's resolved config, checked here so that a mistake stops before anything starts."""
    if job not in TRAINING_JOBS:
        raise ConfigError(f"mingpt diloco runs a training job ({', '.join(TRAINING_JOBS)}), not {job!r}")
    import importlib
    config = importlib.import_module(JOBS[job][0]).get_config()
    config.merge_from_args(take_recipe(job, config, args))
    if not config.diloco.sync_every:
        raise ConfigError("mingpt diloco needs --diloco.sync_every=H, the inner steps between outer steps "
                          "(e.g. 20)")
    config.check()
    diloco.require_torchft()
    return config


def main_args(args: list[str]) -> int:
    """`mingpt diloco ...` (the command line after the job's name); returns the exit status."""
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    own, job, job_args = split_args(args)
    c = get_config()
    c.merge_from_args(own)
    c.check("--")
    config = job_config(job, job_args)
    setup_logging()
    s, work_dir = config.system, Path(config.system.work_dir)
    if not s.resume and not s.overwrite and RunFolder(work_dir).holds_run():
        raise FileExistsError(f"{str(work_dir)!r} already holds a run; continue it with --system.resume=true, "
                              f"start over with --system.overwrite=true, or choose another --system.work_dir")
    from mingpt.distributed.diloco import torchft_adapter

    lighthouse = torchft_adapter.lighthouse(c.port, config.diloco.min_workers, c.join_timeout_s, c.heartbeat_timeout_s)
    threads = max(1, (os.cpu_count() or 1) // c.workers)
    log.info(f"diloco: lighthouse at {lighthouse.address()}; {c.workers} workers of {threads} thread(s), "
             f"logs in {work_dir}/workers/<id>/worker.log")
    workers = [start_worker(i, job, job_args, lighthouse.address(), threads, work_dir) for i in range(c.workers)]
    try:
        return watch(workers, config, work_dir)
    finally:
        lighthouse.shutdown()


def start_worker(worker: int, job: str, args: list[str], lighthouse: str, threads: int,
                 work_dir: Path) -> subprocess.Popen:
    """One worker: the job, in a process of its own (its own session: signals reach it from here)."""
    env = {**os.environ, diloco.LIGHTHOUSE_ENV: lighthouse, diloco.WORKER_ENV: str(worker),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_path = work_dir / "workers" / str(worker) / "worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "mingpt", job, *args, "--trainer.progress_bar=False"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def last_row(work_dir: Path, worker: int) -> dict:
    """A worker's newest metrics row ({} before the first)."""
    path = diloco.worker_folder(work_dir, CfgNode(sync_every=1, worker_id=worker)) / RunFolder.METRICS
    try:
        lines = path.read_text().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, json.JSONDecodeError):
        return {}


def watch(workers: list[subprocess.Popen], config: CfgNode, work_dir: Path) -> int:
    """Show the workers' progress until all have ended; Ctrl-C / SIGTERM stops them all."""
    stopping: list[int] = []

    def stop(signum, frame):
        stopping.append(signum)
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=config.trainer.max_iters, desc="diloco", dynamic_ncols=True, mininterval=1.0)
    deadline = None
    try:
        while any(w.poll() is None for w in workers):
            rows = [last_row(work_dir, i) for i in range(len(workers))]
            done = min(row.get("iter", 0) for row in rows)
            bar.update(done - bar.n)
            bar.set_postfix_str(" ".join(f"w{i}:{row['loss']:.3f}" for i, row in enumerate(rows) if row)
                                + f" syncs:{rows[0].get('syncs', 0)}", refresh=False)
            if stopping and deadline is None:
                deadline = time.time() + 120
            if deadline is not None and time.time() > deadline:  # a worker stuck in a sync: end it
                for w in workers:
                    if w.poll() is None:
                        w.kill()
            time.sleep(0.5)
    finally:
        bar.close()
        for sig, old in previous.items():
            signal.signal(sig, old)
    if stopping:
        raise KeyboardInterrupt("all workers stopped; continue with --system.resume=true")
    failed = [(i, w.returncode) for i, w in enumerate(workers) if w.returncode != 0]
    for i, code in failed:
        log.error(f"worker {i} exited with status {code}: {last_line(work_dir, i)} "
                  f"(see {work_dir}/workers/{i}/worker.log)")
    if failed:
        return 1
    summary = json.loads((work_dir / RunFolder.SUMMARY).read_text())
    log.info(f"diloco: best val loss {summary.get('val_loss')} after {summary['iters']} iterations; worker 0 sent "
             f"{summary['comm_bytes']:,} bytes in {summary['syncs']} syncs")
    return 0


def last_line(work_dir: Path, worker: int) -> str:
    try:
        lines = [line for line in (work_dir / "workers" / str(worker) / "worker.log").read_text().splitlines()
                 if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("diloco", sys.argv[1:]))
