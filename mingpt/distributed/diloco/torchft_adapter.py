"""Every use of torchft (>=0.2,<0.3), in one module, imported only when DiLoCo runs: its Manager
(extended to count what it sends, to pack the outer gradient and to refuse a quorum with a worker
of other settings), its DiLoCo on the optimizer's step hooks, the outer state a checkpoint keeps,
and the lighthouse. Where torchft offers no public way, its private members are used here, and
only here: the manager's client (_client._quorum), its process group (_pg), torchft.work._DummyWork,
and the DiLoCo's fragments (_fragments, their _outer_optimizer) and step counter (_local_step).
"""
from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from contextlib import ExitStack
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.distributed import TCPStore
from torch.distributed.distributed_c10d import AllgatherOptions, AllToAllOptions, ReduceOp
from torchft.coordination import LighthouseServer
from torchft.local_sgd import DiLoCo
from torchft.manager import Manager
from torchft.process_group import ProcessGroupGloo
from torchft.work import _DummyWork

from mingpt.distributed import Place, ring_allreduce_bytes
from mingpt.distributed.diloco import LIGHTHOUSE_ENV, mismatch
from mingpt.distributed.diloco.packing import PackedExchange
from mingpt.utils import ConfigError

log = logging.getLogger(__name__)
_stores: list[TCPStore] = []  # the workers' group stores, kept alive for the process's life


class CountingManager(Manager):
    """torchft's Manager, counting the bytes this worker sends (comm_bytes) and the outer steps it
    commits (syncs), packing the outer gradient (bf16, int8: packing.py) and refusing a quorum with
    a worker of other settings (_CheckedClient)."""

    def __init__(self, *args: Any, packing: str, fragments: int, config_hash: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.packing, self.fragments = packing, fragments
        self.exchange = PackedExchange(packing) if packing != "fp32" else None
        self.comm_bytes, self.syncs = 0, 0
        self._client = _CheckedClient(self._client, f"mingpt{config_hash}")

    def allreduce(self, tensor: torch.Tensor, should_quantize: bool = False,
                  reduce_op: ReduceOp = ReduceOp.AVG) -> Any:
        if self.errored():
            return _DummyWork(tensor)
        self.wait_quorum()
        n = self.num_participants()
        if self.exchange is None:
            work = super().allreduce(tensor, reduce_op=reduce_op)
            self.comm_bytes += ring_allreduce_bytes(tensor.numel() * tensor.element_size(), n)
            return work
        if not self.is_participating():
            tensor.zero_()
        try:
            tensor.copy_(self._packed(tensor.reshape(-1), n, reduce_op == ReduceOp.AVG).view_as(tensor))
        except Exception as e:  # a peer died mid-exchange: this round is not committed
            self._logger.exception(f"packed exchange failed -- skipping this sync: {e}")
            self.report_error(e)
        return _DummyWork(tensor)

    def _packed(self, flat: torch.Tensor, n: int, average: bool) -> torch.Tensor:
        """The sum (or mean) over the n workers of flat: an all-to-all of the packed segments, each
        worker combining its own, then an all-gather of the combined ones (packing.py)."""
        fragment = self.current_step() % self.fragments
        parts = self.exchange.outgoing(flat, n, fragment)
        size = parts[0].numel()
        received = torch.empty(size * n, dtype=torch.uint8)
        self._pg.alltoall_base(received, torch.cat(parts), [size] * n, [size] * n, AllToAllOptions()).wait()
        combined = self.exchange.combined(list(received.split(size)), fragment, average)
        gathered = [torch.empty_like(combined) for _ in range(n)]
        self._pg.allgather([gathered], [combined], AllgatherOptions()).wait()
        self.comm_bytes += 2 * (n - 1) * size  # (n-1) segments out in each of the two exchanges
        return self.exchange.incoming(gathered, flat.numel())

    def should_commit(self, timeout: timedelta | None = None) -> bool:
        committed = super().should_commit(timeout)
        self.syncs += int(committed)
        return committed


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
        if len(set(hashes)) > 1 and self._refused(hashes, quorum):
            others = next(h for h in hashes if h != self._mine)
            raise ConfigError(mismatch(self._mine.removeprefix("mingpt"), others.removeprefix("mingpt")))
        return quorum

    def _refused(self, hashes: list[str], quorum: Any) -> bool:
        counts = Counter(hashes)
        top = max(counts.values())
        leaders = [h for h in hashes if counts[h] == top]
        if len(set(leaders)) == 1:  # a majority
            return self._mine != leaders[0]
        # a tie: the joiner (healing) gives way, else the first replica id's settings stand
        return quorum.heal or self._mine != sorted(zip(quorum.replica_ids, hashes))[0][1]


def connect(place: Place, config: Any, config_hash: str, worker: int, state_dict: Callable[[], dict],
            load_state_dict: Callable[[dict], None]) -> CountingManager:
    """This worker's manager, joined to the lighthouse (TORCHFT_LIGHTHOUSE): its own store, a gloo
    group over the workers of each quorum, and the functions a healing peer's state goes through.
    An unreachable lighthouse is one line (ConnectionError) within diloco.connect_timeout_s."""
    c = config
    timeout = timedelta(seconds=c.timeout_s)
    store_addr, store_port = _group_store(place, c.host)
    try:
        return CountingManager(
            packing=c.packing, fragments=c.fragments, config_hash=config_hash,
            pg=ProcessGroupGloo(timeout=timeout), load_state_dict=load_state_dict, state_dict=state_dict,
            min_replica_size=c.min_workers, use_async_quorum=False, init_sync=False,  # same seed, same init
            replica_id=f"mingpt{config_hash}_{worker}", store_addr=store_addr, store_port=store_port,
            rank=place.rank, world_size=place.world_size, hostname=c.host or socket.gethostname(),
            timeout=timeout, quorum_timeout=timedelta(seconds=c.quorum_timeout_s),
            connect_timeout=timedelta(seconds=c.connect_timeout_s))
    except RuntimeError as e:  # (torchft's Rust client says "failed to connect to ... within timeout")
        if "failed to connect" not in str(e):
            raise
        raise ConnectionError(
            f"cannot reach the DiLoCo lighthouse at {os.environ.get(LIGHTHOUSE_ENV)} within "
            f"diloco.connect_timeout_s={c.connect_timeout_s}: start it there (torchft_lighthouse), fix "
            f"{LIGHTHOUSE_ENV}, or raise the timeout for a slow link") from None


def _group_store(place: Place, host: str) -> tuple[str, int]:
    """The TCPStore of this worker's process group: torchrun's (MASTER_ADDR, MASTER_PORT) under
    torchrun, else one started here. Peers connect to it to form the gloo group of a quorum."""
    if place.world_size > 1:
        return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False)
    _stores.append(store)
    return host or socket.gethostname(), store.port


class OuterLoop:
    """torchft's DiLoCo over the model's fragments, hooked on the inner optimizer's steps (an outer
    step after every sync_every-th) until close(), and the outer state a checkpoint keeps."""

    def __init__(self, manager: CountingManager, fragments: list[nn.Module], optimizer: torch.optim.Optimizer,
                 config: Any) -> None:
        c = config
        outer = [torch.optim.SGD(f.parameters(), lr=c.outer_lr, momentum=c.outer_momentum, nesterov=True)
                 for f in fragments]
        self.diloco = DiLoCo(manager, fragments, optimizer, outer, sync_every=c.sync_every,
                             backup_device=torch.device("cpu"), pin_memory=False, use_bucketization=True,
                             fragment_sync_delay=c.sync_delay)
        self._hooked = ExitStack()
        self._hooked.enter_context(self.diloco)

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON part, tensors): each fragment's global weights and outer momentum, and the steps
        since the last sync."""
        tensors = {}
        for i, fragment in enumerate(self.diloco._fragments):
            for name, t in fragment.original_parameters.items():
                tensors[f"diloco.{i}.global.{name}"] = t.detach().clone()
            for index, s in fragment._outer_optimizer.state_dict()["state"].items():
                if s.get("momentum_buffer") is not None:
                    tensors[f"diloco.{i}.momentum.{index}"] = s["momentum_buffer"].detach().clone()
        return {"local_step": self.diloco._local_step}, tensors

    def load_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Take back what state() gave."""
        for i, fragment in enumerate(self.diloco._fragments):
            for name, t in fragment.original_parameters.items():
                t.copy_(tensors[f"diloco.{i}.global.{name}"])
            optimizer = fragment._outer_optimizer
            state = optimizer.state_dict()
            momenta = {index: {"momentum_buffer": tensors[f"diloco.{i}.momentum.{index}"]}
                       for index in range(sum(len(g["params"]) for g in state["param_groups"]))
                       if f"diloco.{i}.momentum.{index}" in tensors}
            optimizer.load_state_dict({"state": momenta, "param_groups": state["param_groups"]})
        self.diloco._local_step = meta["local_step"]

    def close(self) -> None:
        """Take the hooks off the optimizer."""
        self._hooked.close()


def lighthouse(port: int, min_replicas: int, join_timeout_s: float, heartbeat_timeout_s: float) -> LighthouseServer:
    """A torchft lighthouse in this process (its address(); shutdown() ends it). RUST_LOG=warn
    unless set: torchft's lighthouse logs every quorum at info."""
    os.environ.setdefault("RUST_LOG", "warn")
    return LighthouseServer(bind=f"[::]:{port}", min_replicas=min_replicas,
                            join_timeout_ms=int(join_timeout_s * 1000),
                            heartbeat_timeout_ms=int(heartbeat_timeout_s * 1000))
