"""DiLoCo: workers that train apart for H steps, then agree, on torchft (the optional extra
`pip install "mingpt[diloco]"`).

Each worker (a whole training job, one process or a torchrun group) takes sync_every = H inner
AdamW steps on its own batches; then the workers average the change of their weights since the
last agreement (the outer gradient, global - local) and apply it with an outer Nesterov SGD
(Douillard et al. 2023, arXiv 2311.08105). torchft does the rest: a lighthouse forms a quorum of
the workers alive every round, a failed worker is dropped (that round at most is lost), a joining
one is healed from a live peer (the state_dict functions below), and Streaming DiLoCo syncs the
model's fragments in turn (arXiv 2501.18512). The Trainer sees one more strategy (parallel.py):

    worker:  TORCHFT_LIGHTHOUSE=http://host:29510 REPLICA_GROUP_ID=3 mingpt chargpt --diloco.sync_every=20
    one box: mingpt diloco --workers=2 chargpt --diloco.sync_every=20          (mingpt/jobs/diloco.py)

What crosses the network is counted (comm_bytes, from the algorithm's own figures): a ring
all-reduce of S bytes sends 2(n-1)/n x S per worker. The packed exchanges (bf16, int8) send as
much of the packed bytes: an all-to-all hands worker j the j-th n-th of everyone's packed outer
gradient, which it adds up in fp32, packs again and all-gathers, so every worker ends with the
same mean bit for bit.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
import torch.nn as nn

from mingpt.distributed import Place, ring_allreduce_bytes
from mingpt.utils import CfgNode, ConfigError

log = logging.getLogger(__name__)

PACKINGS = ("fp32", "bf16", "int8")
INSTALL = 'pip install "mingpt[diloco]"'
WORKER_ENV, LIGHTHOUSE_ENV = "REPLICA_GROUP_ID", "TORCHFT_LIGHTHOUSE"
# settings that may differ between workers: where and how fast one machine runs, not what it trains
_LOCAL_KEYS = {"system": None, "sample": None,
               "trainer": ("device", "num_workers", "compile", "progress_bar", "log_interval", "dtype"),
               "diloco": ("worker_id", "host", "timeout_s", "quorum_timeout_s", "connect_timeout_s")}


def get_default_config() -> CfgNode:
    """The `diloco` section of the training jobs; sync_every=0 (the default) is off and costs nothing."""
    return CfgNode(
        sync_every=0,  # H: inner steps between outer steps (0: off, the job trains as it always did)
        outer_lr=0.7,  # the outer Nesterov SGD (the paper's values)
        outer_momentum=0.9,
        fragments=1,  # Streaming DiLoCo: the model in this many parts, synced in turn (H / fragments apart)
        sync_delay=0,  # streaming: inner steps a fragment's exchange may overlap before it is applied
        packing="fp32",  # the outer gradient on the wire: 'fp32', 'bf16' (fp32 sums) or 'int8' (error feedback)
        min_workers=1,  # fewer alive than this and no outer step is taken (the lighthouse waits for them)
        worker_id=None,  # None: the REPLICA_GROUP_ID environment variable (0 without it)
        host="",  # the name other workers reach this one by ('': this machine's hostname)
        timeout_s=60,  # one exchange or a healing transfer; longer on slow links
        quorum_timeout_s=600,  # how long a worker waits for the others at a sync (longer than H steps take)
        connect_timeout_s=30,  # reaching the lighthouse and the peers
    )


def enabled(config: CfgNode | None) -> bool:
    return config is not None and bool(config.sync_every)


def config_problems(c: CfgNode) -> list[str]:
    """What is wrong with a diloco section (an empty list when nothing is)."""
    problems = []
    def whole(key: str, low: int) -> bool:
        value = getattr(c, key)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        if not ok:
            problems.append(f"diloco.{key}={value!r} must be a whole number >= {low}")
        return ok

    if not whole("sync_every", 0) or not c.sync_every:
        return problems
    if whole("fragments", 1):
        if c.sync_every % c.fragments:
            problems.append(f"diloco.sync_every={c.sync_every} must be a multiple of diloco.fragments="
                            f"{c.fragments} (each fragment syncs every sync_every / fragments steps)")
        elif whole("sync_delay", 0) and c.sync_delay >= c.sync_every // c.fragments:
            problems.append(f"diloco.sync_delay={c.sync_delay} must be smaller than sync_every / fragments = "
                            f"{c.sync_every // c.fragments}")
    whole("min_workers", 1)
    if not isinstance(c.outer_lr, (int, float)) or c.outer_lr <= 0:
        problems.append(f"diloco.outer_lr={c.outer_lr!r} must be > 0")
    if not isinstance(c.outer_momentum, (int, float)) or not 0 <= c.outer_momentum < 1:
        problems.append(f"diloco.outer_momentum={c.outer_momentum!r} must be in [0, 1)")
    if c.packing not in PACKINGS:
        problems.append(f"diloco.packing={c.packing!r} must be one of {', '.join(map(repr, PACKINGS))}")
    for key in ("timeout_s", "quorum_timeout_s", "connect_timeout_s"):
        if not isinstance(getattr(c, key), (int, float)) or getattr(c, key) <= 0:
            problems.append(f"diloco.{key}={getattr(c, key)!r} must be a number of seconds > 0")
    return problems


def require_torchft() -> None:
    """Refuse DiLoCo in one line when torchft is not installed."""
    try:
        import torchft  # noqa: F401
    except ImportError:
        raise ConfigError(f"diloco.sync_every needs torchft, which is not installed; {INSTALL}") from None


def check(c: CfgNode) -> None:
    """Refuse, in one line, a DiLoCo section that cannot run here: a wrong value, no torchft, no
    lighthouse to join. (Called before anything is written.)"""
    problems = config_problems(c)
    if problems:
        raise ConfigError("; ".join(problems))
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
        local = _LOCAL_KEYS.get(section, ())
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


# -- packing the outer gradient -----------------------------------------------------------------------
def pack(tensor: torch.Tensor, packing: str, residual: torch.Tensor | None = None) -> torch.Tensor:
    """A float32 tensor as the bytes that go on the wire (uint8): bf16, or int8 with one fp32 scale
    (absmax / 127). int8 keeps error feedback: what rounding lost this time (residual, updated in
    place) is added before the next rounding, so the errors do not build up over rounds."""
    flat = tensor.reshape(-1).float()
    if packing == "bf16":
        return flat.to(torch.bfloat16).view(torch.uint8)
    if packing != "int8":
        raise ValueError(f"unknown packing {packing!r}")
    corrected = flat + residual if residual is not None else flat
    scale = (corrected.abs().max() / 127).clamp_min(1e-30)
    q = (corrected / scale).round_().clamp_(-127, 127).to(torch.int8)
    if residual is not None:
        residual.copy_(corrected - q.float() * scale)
    return torch.cat([q.view(torch.uint8), scale.reshape(1).view(torch.uint8)])


def unpack(payload: torch.Tensor, packing: str) -> torch.Tensor:
    """The float32 values of pack's bytes (flat)."""
    if packing == "bf16":
        return payload.view(torch.bfloat16).float()
    q, scale = payload[:-4].view(torch.int8), payload[-4:].view(torch.float32)
    return q.float() * scale


# -- the strategy -----------------------------------------------------------------------------------
class DiLoCo:
    """The Trainer's strategy (parallel.py's interface) for a DiLoCo worker: inside the worker,
    `inner` (single, DDP) trains as ever; after every H-th optimizer step torchft's DiLoCo takes
    the outer step with the other workers."""

    name = "diloco"

    def __init__(self, inner: Any, config: CfgNode, run_config: dict, place: Place) -> None:
        check(config)
        if inner.name == "fsdp":
            raise ConfigError("diloco.sync_every with trainer.fsdp=True is not supported; a DiLoCo worker "
                              "trains alone or with DDP (leave trainer.fsdp off)")
        self.inner, self.config, self.place = inner, config, place
        trainer = run_config.get("trainer") or {}
        for key in ("max_iters", "eval_interval"):  # (evaluations and the end see agreed weights then)
            value = trainer.get(key)
            if isinstance(value, int) and value % config.sync_every and place.is_main:
                log.warning(f"trainer.{key}={value} is not a multiple of diloco.sync_every={config.sync_every}: "
                            f"{'the run ends' if key == 'max_iters' else 'evaluations and checkpoints come'} "
                            f"mid-round, on this worker's own weights")
        self.shares_evaluation = inner.shares_evaluation
        self.worker = worker_id(config)
        self.config_hash = config_hash(run_config)
        self._comm_before, self._syncs_before = 0, 0  # a resumed run's counts up to its checkpoint
        self.manager = self.diloco = None
        self._base_seed = 0
        # iterations a heal jumped over (the inner strategy counts its steps by the iteration)
        self._drawn_iteration, self._iterations_healed_over = 0, 0

    # the inner strategy's part, unchanged
    def wrap(self, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, compile: bool) -> nn.Module:
        return self.inner.wrap(model, device, amp_dtype, compile)

    def no_sync(self, step_model: nn.Module, last_micro_batch: bool) -> ContextManager:
        return self.inner.no_sync(step_model, last_micro_batch)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.inner.after_step(model, optimizer)  # (the outer step ran in the optimizer's step hook)

    def full_state(self, model, optimizer):
        return self.inner.full_state(model, optimizer)

    def optimizer_state_loader(self, model, optimizer):
        return self.inner.optimizer_state_loader(model, optimizer)

    # what DiLoCo adds
    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
              live_state: Callable[[], dict], load_live_state: Callable[[dict], None]) -> None:
        """Join the workers: a torchft Manager (its own store, the lighthouse, a gloo group over
        the workers), the outer optimizers, and torchft's DiLoCo on the optimizer's step hooks."""
        from torchft.local_sgd import DiLoCo as TorchftDiLoCo
        from torchft.process_group import ProcessGroupGloo

        c = self.config
        self._base_seed = generator.initial_seed()
        timeout = timedelta(seconds=c.timeout_s)
        store_addr, store_port = _group_store(self.place, c.host)
        mine = self.config_hash

        def save() -> dict:
            return {"config_hash": mine, **live_state()}

        def load(state: dict) -> None:  # healing: refused before anything is loaded if the configs differ
            if state.get("config_hash") != mine:
                raise ConfigError(_mismatch(mine, state.get("config_hash")))
            load_live_state(state)
            self._iterations_healed_over += state["iter_num"] - self._drawn_iteration

        manager_class = _manager_class()
        try:
            self.manager = manager_class(
                packing=c.packing, fragments=c.fragments, config_hash=mine,
                pg=ProcessGroupGloo(timeout=timeout), load_state_dict=load, state_dict=save,
                min_replica_size=c.min_workers, use_async_quorum=False, init_sync=False,  # same seed, same init
                replica_id=f"mingpt{mine}_{self.worker}", store_addr=store_addr, store_port=store_port,
                rank=self.place.rank, world_size=self.place.world_size, hostname=c.host or _hostname(),
                timeout=timeout, quorum_timeout=timedelta(seconds=c.quorum_timeout_s),
                connect_timeout=timedelta(seconds=c.connect_timeout_s))
        except RuntimeError as e:  # (torchft's Rust client says "failed to connect to ... within timeout")
            if "failed to connect" not in str(e):
                raise
            raise ConnectionError(
                f"cannot reach the DiLoCo lighthouse at {os.environ.get(LIGHTHOUSE_ENV)} within "
                f"diloco.connect_timeout_s={c.connect_timeout_s}: start it there (torchft_lighthouse), fix "
                f"{LIGHTHOUSE_ENV}, or raise the timeout for a slow link") from None
        fragments = split_into_fragments(model, c.fragments)
        outer = [torch.optim.SGD(f.parameters(), lr=c.outer_lr, momentum=c.outer_momentum, nesterov=True)
                 for f in fragments]
        self.diloco = TorchftDiLoCo(self.manager, fragments, optimizer, outer, sync_every=c.sync_every,
                                    backup_device=torch.device("cpu"), pin_memory=False, use_bucketization=True,
                                    fragment_sync_delay=c.sync_delay)
        self.diloco.__enter__()
        if self.place.is_main:
            log.info(f"diloco worker {self.worker}: outer step every {c.sync_every} steps ({c.fragments} "
                     f"fragment(s), {c.packing}), lighthouse {os.environ[LIGHTHOUSE_ENV]}, config {mine}")

    def before_draw(self, generator: torch.Generator, iteration: int) -> None:
        self._drawn_iteration = iteration
        generator.manual_seed(batch_seed(self._base_seed, self.worker, iteration))

    def counters(self, iterations: int) -> dict[str, int]:
        """comm_bytes: what this process sent to other workers (the outer exchanges); syncs: the
        outer steps committed. With DDP inside the worker, inner_comm_bytes: what this rank sent
        to the worker's other ranks (the gradient all-reduces, on the worker's own fast links),
        kept apart. (Under torchrun every rank exchanges the whole outer gradient with the ranks
        of its local rank in the other workers, as torchft pairs them: the worker as a whole sends
        world_size x comm_bytes.)"""
        manager = self.manager
        counts = {"comm_bytes": self._comm_before + (manager.comm_bytes if manager else 0),
                  "syncs": self._syncs_before + (manager.syncs if manager else 0)}
        inner = self.inner.counters(iterations - self._iterations_healed_over)  # (the steps it took)
        if "comm_bytes" in inner:
            counts["inner_comm_bytes"] = inner["comm_bytes"]
        return counts

    def checkpoint_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """The outer state, for exact resume: each fragment's global weights and outer momentum,
        the steps since the last sync, the manager's step, and the counts."""
        tensors = {}
        for i, fragment in enumerate(self.diloco._fragments):
            for name, t in fragment.original_parameters.items():
                tensors[f"diloco.{i}.global.{name}"] = t.detach().clone()
            for index, s in fragment._outer_optimizer.state_dict()["state"].items():
                if s.get("momentum_buffer") is not None:
                    tensors[f"diloco.{i}.momentum.{index}"] = s["momentum_buffer"].detach().clone()
        meta = {"local_step": self.diloco._local_step, "manager": self.manager.state_dict(),
                "config_hash": self.config_hash, "iterations_healed_over": self._iterations_healed_over,
                **{k: v for k, v in self.counters(0).items() if k != "inner_comm_bytes"}}
        return {"diloco": meta}, tensors

    def load_checkpoint_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        saved = meta.get("diloco")
        if saved is None:
            raise ConfigError("this checkpoint was saved without diloco; resume it without --diloco.sync_every")
        if saved["config_hash"] != self.config_hash:
            log.warning(f"resuming a DiLoCo worker whose shared settings changed (config {saved['config_hash']} "
                        f"-> {self.config_hash}): every worker must resume with the same")
        for i, fragment in enumerate(self.diloco._fragments):
            for name, t in fragment.original_parameters.items():
                t.copy_(tensors[f"diloco.{i}.global.{name}"])
            optimizer = fragment._outer_optimizer
            state = optimizer.state_dict()
            momenta = {index: {"momentum_buffer": tensors[f"diloco.{i}.momentum.{index}"]}
                       for index in range(sum(len(g["params"]) for g in state["param_groups"]))
                       if f"diloco.{i}.momentum.{index}" in tensors}
            optimizer.load_state_dict({"state": momenta, "param_groups": state["param_groups"]})
        self.diloco._local_step = saved["local_step"]
        self.manager.load_state_dict(saved["manager"])
        self._comm_before, self._syncs_before = saved["comm_bytes"], saved["syncs"]
        self._iterations_healed_over = saved.get("iterations_healed_over", 0)

    def close(self) -> None:
        if self.diloco is not None:
            self.diloco.__exit__(None, None, None)
        if self.manager is not None:
            self.manager.shutdown(wait=False)


def split_into_fragments(model: nn.Module, n: int) -> list[nn.Module]:
    """The model's parameters in n contiguous parts of about equal size (in registration order:
    for a GPT, embeddings and the first blocks, ..., the last blocks and the final norm), each a
    module that holds the model's own parameters (not copies), as torchft's DiLoCo takes them."""
    named = list(model.named_parameters())
    total = sum(p.numel() for _, p in named)
    parts: list[list[tuple[str, nn.Parameter]]] = [[] for _ in range(n)]
    seen = 0
    for name, p in named:
        parts[min(n - 1, seen * n // max(total, 1))].append((name, p))
        seen += p.numel()
    if any(not part for part in parts):
        raise ConfigError(f"diloco.fragments={n} is more than the model's {len(named)} parameter tensors "
                          f"can be split into; use fewer")
    fragments = []
    for part in parts:
        fragment = nn.Module()
        for name, p in part:
            fragment.register_parameter(name.replace(".", "__"), p)
        fragments.append(fragment)
    return fragments


def _mismatch(mine: str, group: str | None) -> str:
    return (f"this worker's settings differ from the group's (config {mine}, the group's {group}): the model, "
            f"data, tokenizer, training, diloco settings and seed must be the same on every worker; start it "
            f"with the group's")


def _hostname() -> str:
    import socket
    return socket.gethostname()


def _group_store(place: Place, host: str) -> tuple[str, int]:
    """The TCPStore of this worker's process group: torchrun's (MASTER_ADDR, MASTER_PORT) under
    torchrun, else one started here. Peers connect to it to form the gloo group of a quorum."""
    if place.world_size > 1:
        return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    from torch.distributed import TCPStore
    store = TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False)
    _stores.append(store)  # (kept alive for the process's life)
    return host or _hostname(), store.port


_stores: list[Any] = []
_manager_classes: list[type] = []


def _manager_class() -> type:
    """torchft's Manager, counting the bytes this worker sends and the syncs it commits, packing
    the outer gradient (bf16, int8) and refusing a quorum with a worker of other settings."""
    if _manager_classes:
        return _manager_classes[0]
    from torch.distributed.distributed_c10d import AllgatherOptions, AllToAllOptions, ReduceOp
    from torchft.manager import Manager
    from torchft.work import _DummyWork

    class CountingManager(Manager):
        def __init__(self, *args: Any, packing: str, fragments: int, config_hash: str, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.packing, self.fragments, self.config_hash = packing, fragments, config_hash
            self.comm_bytes, self.syncs = 0, 0
            self.residuals: dict[tuple, torch.Tensor] = {}  # int8's error feedback, per fragment and stage
            self._client = _CheckedClient(self._client, f"mingpt{config_hash}")

        def allreduce(self, tensor: torch.Tensor, should_quantize: bool = False,
                      reduce_op: ReduceOp = ReduceOp.AVG) -> Any:
            if self.errored():
                return _DummyWork(tensor)
            self.wait_quorum()
            n = self.num_participants()
            if self.packing == "fp32":
                work = super().allreduce(tensor, reduce_op=reduce_op)
                self.comm_bytes += ring_allreduce_bytes(tensor.numel() * tensor.element_size(), n)
                return work
            if not self.is_participating():
                tensor.zero_()
            try:
                tensor.copy_(self._packed_mean(tensor.reshape(-1), n, reduce_op == ReduceOp.AVG).view_as(tensor))
            except Exception as e:  # a peer died mid-exchange: this round is not committed
                self._logger.exception(f"packed exchange failed -- skipping this sync: {e}")
                self.report_error(e)
            return _DummyWork(tensor)

        def _packed_mean(self, flat: torch.Tensor, n: int, average: bool) -> torch.Tensor:
            """The sum (or mean) over the n workers of flat, each n-th packed on the wire twice:
            all-to-all (worker j receives everyone's j-th segment, adds them up in fp32), then
            all-gather of the segments' packed sums. int8 keeps error feedback at both packings."""
            numel, segment = flat.numel(), -(-flat.numel() // n)
            padded = torch.zeros(segment * n)
            padded[:numel] = flat
            fragment = self.current_step() % self.fragments
            residual = self._residual(("sent", fragment, padded.numel()), padded.numel())
            parts = [pack(padded[j * segment:(j + 1) * segment], self.packing,
                          None if residual is None else residual[j * segment:(j + 1) * segment]) for j in range(n)]
            size = parts[0].numel()
            received = torch.empty(size * n, dtype=torch.uint8)
            self._pg.alltoall_base(received, torch.cat(parts), [size] * n, [size] * n, AllToAllOptions()).wait()
            mine = torch.zeros(segment)
            for j in range(n):  # in rank order: the same sum on every worker
                mine += unpack(received[j * size:(j + 1) * size], self.packing)
            if average:
                mine /= n
            packed = pack(mine, self.packing, self._residual(("summed", fragment, segment), segment))
            gathered = [torch.empty_like(packed) for _ in range(n)]
            self._pg.allgather([gathered], [packed], AllgatherOptions()).wait()
            self.comm_bytes += 2 * (n - 1) * size  # (n-1) segments out in each of the two exchanges
            return torch.cat([unpack(g, self.packing) for g in gathered])[:numel]

        def _residual(self, key: tuple, numel: int) -> torch.Tensor | None:
            if self.packing != "int8":
                return None
            return self.residuals.setdefault(key, torch.zeros(numel))

        def should_commit(self, timeout: timedelta | None = None) -> bool:
            committed = super().should_commit(timeout)
            self.syncs += int(committed)
            return committed

    _manager_classes.append(CountingManager)
    return CountingManager


class _CheckedClient:
    """torchft's ManagerClient, checking every quorum before it is used: a quorum with a worker
    of other settings (another config hash in its replica id) is refused by the odd one out
    (the one healing, or in the minority; on a tie the first replica id's settings stand), before
    its weights or outer gradient meet the group's."""

    def __init__(self, client: Any, mine: str) -> None:
        self._inner, self._mine = client, mine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _quorum(self, **kwargs: Any) -> Any:
        try:
            quorum = self._inner._quorum(**kwargs)
        except Exception as e:
            if "connect" in str(e).lower() or "timed out" in str(e).lower() or "deadline" in str(e).lower():
                raise ConnectionError(f"no quorum with the lighthouse at {os.environ.get(LIGHTHOUSE_ENV)} "
                                      f"within the timeout ({str(e).splitlines()[0][:200]}); check the address, "
                                      f"that it runs, and diloco.quorum_timeout_s / connect_timeout_s") from None
            raise
        hashes = [rid.split(":")[0].rsplit("_", 1)[0] for rid in quorum.replica_ids]
        if len(set(hashes)) > 1:
            counts = Counter(hashes)
            top = max(counts.values())
            leaders = [h for h in hashes if counts[h] == top]
            if len(set(leaders)) == 1:  # a majority
                refused = self._mine != leaders[0]
            else:  # a tie: the joiner (healing) gives way, else the first replica id's settings stand
                refused = quorum.heal or self._mine != sorted(zip(quorum.replica_ids, hashes))[0][1]
            if refused:
                others = next(h for h in hashes if h != self._mine)
                raise ConfigError(_mismatch(self._mine.removeprefix("mingpt"), others.removeprefix("mingpt")))
        return quorum
