"""DiLoCo: workers that train apart for H steps, then agree (Douillard et al. 2023, arXiv
2311.08105), on torchft (the optional extra `pip install "mingpt[diloco]"`).

Each worker (a whole training job, one process or a torchrun group) takes sync_every = H inner
steps on its own batches; then the workers average the change of their weights since the last
agreement (the outer gradient) and apply it with an outer Nesterov SGD. torchft forms a quorum of
the workers alive every round, drops a failed one and heals a joining one from a live peer;
Streaming DiLoCo syncs the model's fragments in turn (arXiv 2501.18512).

    worker:  TORCHFT_LIGHTHOUSE=http://host:29510 REPLICA_GROUP_ID=3 mingpt chargpt --diloco.sync_every=20
    one box: mingpt diloco --workers=2 chargpt --diloco.sync_every=20          (mingpt/jobs/diloco.py)

This package, by layer:
    __init__         the `diloco` config section and what a worker needs to know without torchft:
                     its id and folder, the hash of the settings every worker shares, its batches' seed
    packing          the outer gradient on the wire (fp32, bf16, int8 with error feedback) and its
                     combination, as pure functions over tensors
    strategy         the Trainer's strategy for a worker (distributed/parallel.py's interface)
    torchft_adapter  every use of torchft, its private members included (torchft>=0.2,<0.3);
                     imported only when DiLoCo runs
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from mingpt.utils import CfgNode, ConfigError, Setting

PACKINGS = ("fp32", "bf16", "int8")
INSTALL = 'pip install "mingpt[diloco]"'
WORKER_ENV, LIGHTHOUSE_ENV = "REPLICA_GROUP_ID", "TORCHFT_LIGHTHOUSE"
# settings that may differ between workers: where and how fast one machine runs, not what it trains
LOCAL_KEYS = {"system": None, "sample": None,
              "trainer": ("device", "num_workers", "compile", "progress_bar", "log_interval", "dtype"),
              "diloco": ("worker_id", "host", "timeout_s", "quorum_timeout_s", "connect_timeout_s")}


def get_default_config() -> CfgNode:
    """The `diloco` section of the training jobs; sync_every=0 (the default) is off and costs nothing."""
    return CfgNode(
        sync_every=Setting(0, min=0),  # H: inner steps between outer steps (0: off, the job trains as it always did)
        outer_lr=Setting(0.7, above=0),  # the outer Nesterov SGD (the paper's values)
        outer_momentum=Setting(0.9, min=0, below=1),
        fragments=Setting(1, min=1),  # Streaming DiLoCo: the model in this many parts, synced in turn (H / fragments apart)
        sync_delay=Setting(0, min=0),  # streaming: inner steps a fragment's exchange may overlap before it is applied
        # the outer gradient on the wire: 'fp32', 'bf16' (fp32 sums) or 'int8' (error feedback)
        packing=Setting("fp32", choices=PACKINGS),
        min_workers=Setting(1, min=1),  # fewer alive than this and no outer step is taken (the lighthouse waits)
        worker_id=Setting(None, kind=int, min=0),  # None: the REPLICA_GROUP_ID environment variable (0 without it)
        host="",  # the name other workers reach this one by ('': this machine's hostname)
        timeout_s=Setting(60, above=0),  # one exchange or a healing transfer; longer on slow links
        quorum_timeout_s=Setting(600, above=0),  # how long a worker waits for the others at a sync (> H steps' time)
        connect_timeout_s=Setting(30, above=0),  # reaching the lighthouse and the peers
    ).also_check(_fragments_fit)


def _fragments_fit(c: CfgNode, prefix: str) -> list[str]:
    """Streaming DiLoCo's fragments take turns: each syncs every sync_every / fragments steps, and
    its exchange may overlap fewer steps than that."""
    if not c.sync_every:
        return []
    if c.sync_every % c.fragments:
        return [f"{prefix}sync_every={c.sync_every} must be a multiple of {prefix}fragments={c.fragments} "
                f"(each fragment syncs every sync_every / fragments steps)"]
    if c.sync_delay >= c.sync_every // c.fragments:
        return [f"{prefix}sync_delay={c.sync_delay} must be smaller than sync_every / fragments = "
                f"{c.sync_every // c.fragments}"]
    return []


def enabled(config: CfgNode | None) -> bool:
    return config is not None and bool(config.sync_every)


def require_torchft() -> None:
    """Refuse DiLoCo in one line when torchft is not installed (nothing of it is imported here)."""
    if importlib.util.find_spec("torchft") is None:
        raise ConfigError(f"diloco.sync_every needs torchft, which is not installed; {INSTALL}")


def check(c: CfgNode) -> None:
    """Refuse, in one line, a DiLoCo section that cannot run here: a wrong value, no torchft, no
    lighthouse to join. (Called before anything is written.)"""
    c.check("diloco.")
    require_torchft()
    if LIGHTHOUSE_ENV not in os.environ:
        raise ConfigError(f"diloco.sync_every={c.sync_every} needs a lighthouse: set "
                          f"{LIGHTHOUSE_ENV}=http://HOST:29510 (torchft_lighthouse --min_replicas 1), or "
                          f"start the workers with `mingpt diloco --workers=N JOB ...`")
    worker_id(c)


def worker_id(c: CfgNode) -> int:
    """This worker's id: diloco.worker_id, else REPLICA_GROUP_ID, else 0."""
    value = c.worker_id if c.worker_id is not None else os.environ.get(WORKER_ENV, "0")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"the worker id {value!r} ({WORKER_ENV} or diloco.worker_id) must be a whole number") from None


def worker_folder(work_dir: str | Path, c: CfgNode | None) -> Path:
    """Where a worker keeps its run: worker 0 writes the shared run folder (its results are the
    run's), worker i > 0 work_dir/workers/i (its own metrics, checkpoints and log)."""
    if not enabled(c) or worker_id(c) == 0:
        return Path(work_dir)
    return Path(work_dir) / "workers" / str(worker_id(c))


def config_hash(run_config: dict) -> str:
    """A short hash of what every worker must share: the model, data, tokenizer, training and
    DiLoCo settings and the seed (not where each machine keeps its files, nor its device)."""
    shared = {}
    for section, value in run_config.items():
        local = LOCAL_KEYS.get(section, ())
        if local is None or section == "resolved":
            continue
        shared[section] = {k: v for k, v in value.items() if k not in local} if isinstance(value, dict) else value
    shared["seed"] = (run_config.get("system") or {}).get("seed")
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:12]


def batch_seed(base_seed: int, worker: int, iteration: int) -> int:
    """The seed of a worker's batches at an iteration: each worker draws its own data, and the data
    position is the iteration itself, so a healed or resumed worker draws on where it should."""
    digest = hashlib.blake2b(f"{base_seed}:{worker}:{iteration}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def mismatch(mine: str, group: str | None) -> str:
    """The one line a worker of other settings than its group's stops with."""
    return (f"this worker's settings differ from the group's (config {mine}, the group's {group}): the model, "
            f"data, tokenizer, training, diloco settings and seed must be the same on every worker; start it "
            f"with the group's")
