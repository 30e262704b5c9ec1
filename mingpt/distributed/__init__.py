"""Training on several processes with torchrun, on PyTorch's own engine: one process per device.

    torchrun --standalone --nproc_per_node=8 -m mingpt chargpt        # 8 GPUs of one machine
    torchrun --standalone --nproc_per_node=2 -m mingpt chargpt --trainer.device=cpu

torchrun starts the processes and tells each its place (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). init() joins them into one process group (gloo for CPU tensors, nccl
for CUDA ones; runtime.setup calls it once per process); replicate() wraps the model in
DistributedDataParallel (every rank holds the whole model and gradients are averaged in
backward), shard() splits it with FSDP2's fully_shard (parameters, gradients and optimizer state
spread over the ranks). A plain process is rank 0 of 1: then every helper here returns at once
and torch.distributed is never touched. Beside this plumbing: parallel.py (the strategies the
Trainer trains with: one process, DDP, FSDP2, behind one interface) and diloco/ (workers that
sync rarely, on torchft).
"""
from __future__ import annotations

import atexit
import os
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ContextManager, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True)
class Place:
    """Where this process stands in the job."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # its index among the processes of its machine: the GPU it drives

    @property
    def is_main(self) -> bool:
        """Rank 0 is the one that writes: logs, metrics, checkpoints."""
        return self.rank == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def place() -> Place:
    """This process's place, read without joining anything: from the process group if there is
    one, else from what torchrun set in the environment (rank 0 of 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return Place(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
    rank = int(os.environ.get("RANK", 0))
    return Place(rank, int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", rank)))


def init() -> Place:
    """Join the job this process belongs to and return its place: a process group you set up
    yourself, else the one torchrun describes in the environment, else rank 0 of 1."""
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", 1)) == 1:
            return Place()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        cuda = torch.cuda.is_available() and local_rank < torch.cuda.device_count()
        if cuda:
            torch.cuda.set_device(local_rank)
        # small control messages (flags, errors, RNG states) go over gloo even beside nccl
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
        atexit.register(_leave)
    return place()


_farewell: list[Any] = []  # the barrier's work of _leave: the interpreter itself frees it, last


def _leave() -> None:
    if dist.is_initialized():
        # destroy_process_group neither waits for nor stops gloo's worker threads, and one may free
        # the last collective's tensors after wait() has returned here; freeing a tensor Python sees
        # takes the GIL, and a thread asking for it while the interpreter finalizes aborts the
        # process (SIGABRT). A barrier holds every work still in flight until it is itself freed;
        # kept here, it is freed by this thread, at the end (pytorch/pytorch#190489). A rank that
        # failed alone waits for the others 30 s at most.
        try:
            work = dist.barrier(async_op=True, timeout=timedelta(seconds=30))
            _farewell.append(work)
            work.wait()
        except RuntimeError:  # the others failed, or are stuck elsewhere: leave anyway
            pass
        dist.destroy_process_group()


def local_device(device: torch.device, place: Place) -> torch.device:
    """The device of this rank: 'cuda' means cuda:LOCAL_RANK when there are several processes."""
    if place.world_size == 1:
        return device
    if device.type == "cuda":
        if place.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={place.local_rank} but this machine shows only "
                             f"{torch.cuda.device_count()} GPU(s); start at most that many processes "
                             f"per node (--nproc_per_node)")
        return torch.device("cuda", place.local_rank)
    if device.type != "cpu":
        raise ValueError(f"trainer.device={device.type} cannot train on several processes; use "
                         f"cuda or cpu")
    return device


# -- wrapping the model ------------------------------------------------------------------------------
def replicate(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP: every rank keeps the whole model; backward averages the gradients over the ranks."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(model: nn.Module, device: torch.device, param_dtype: torch.dtype | None) -> nn.Module:
    """FSDP2: shard model in place over the ranks and return it. Each module of an nn.ModuleList
    (a transformer's blocks) is one unit, gathered whole only while it runs; the rest (embeddings,
    final norm, the tied head) goes with the root. param_dtype: the dtype the gathered parameters
    compute in (bf16, fp16); the shards, gradients' reduction and optimizer stay fp32.

    The model may still be on the CPU: each unit moves to `device` as it is sharded, so a model
    larger than one GPU never sits whole on one.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    for tensor in model.state_dict().values():  # every rank shards the same weights: rank 0's
        on_device = tensor.to(device)  # (nccl is far faster than gloo; one tensor at a time)
        dist.broadcast(on_device, src=0)
        tensor.copy_(on_device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for module in reversed(list(model.modules())):  # innermost first
        if isinstance(module, nn.ModuleList):
            for unit in module:
                fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    if callable(getattr(model, "generate", None)):  # generate runs the model outside forward
        register_fsdp_forward_method(model, "generate")
    return model


def no_sync(model: nn.Module, skip: bool) -> ContextManager:
    """With skip=True, DDP keeps this backward's gradients local (accumulating them) instead of
    averaging them over the ranks: used on every micro-batch but the last of a step."""
    return model.no_sync() if skip and isinstance(model, DistributedDataParallel) else nullcontext()


def ring_allreduce_bytes(nbytes: int, n: int) -> int:
    """Bytes one of n ranks sends in a ring all-reduce of nbytes (a reduce-scatter, then an
    all-gather: each n-1 chunks of nbytes / n), the figure comm_bytes counts."""
    return 2 * (n - 1) * nbytes // n if n > 1 else 0


# -- agreeing and exchanging ---------------------------------------------------------------------------
def total(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of tensor over the ranks, in place (tensor itself in one process)."""
    if _active():
        dist.all_reduce(tensor)
    return tensor


def mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of tensor over the ranks (tensor itself in one process)."""
    return total(tensor) / dist.get_world_size() if _active() else tensor


def max_over_ranks(*values: int) -> list[int]:
    """Each value's maximum over the ranks: a flag set on any rank is set on all. It travels on
    the CPU (gloo), so it does not wait for the GPU."""
    if not _active():
        return list(values)
    flags = torch.tensor(values, dtype=torch.long)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.tolist()


def from_main(value: T) -> T:
    """Rank 0's value, on every rank."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T] | None:
    """Every rank's value, in rank order, on rank 0 (None on the others); [value] in one process."""
    if not _active():
        return [value]
    values = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, values, dst=0)
    return values


def run_together(fn: Callable[[], T], main_only: bool = False) -> T | None:
    """Run fn on every rank (or on rank 0 only, the others waiting for it) and raise its error on
    every rank if it failed on any: a rank that failed alone would leave the others waiting
    forever at their next collective. Returns fn's result (None where it did not run)."""
    runs_here = not main_only or not _active() or dist.get_rank() == 0
    result, error = None, None
    if runs_here:
        try:
            result = fn()
        except Exception as e:  # handed to every rank below
            error = e
    if _active():
        errors: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
        error = error or next((e for e in errors if e is not None), None)
    if error is not None:
        raise error
    return result


# -- checkpoints of a sharded model ----------------------------------------------------------------------
def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """A sharded model's whole weights and optimizer state, gathered on rank 0's CPU (empty on the
    others; every rank must call it). The optimizer state is numbered like optimizer.state_dict(),
    so the checkpoint is the same as one process would write and loads on any number of ranks."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:
        return weights, {}
    index = {name: i for i, name in enumerate(n for g in by_name["param_groups"] for n in g["params"])}
    return weights, {"state": {index[name]: s for name, s in by_name["state"].items()},
                     "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                                      for g in by_name["param_groups"]]}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a whole optimizer state (numbered like optimizer.state_dict(), as full_state gives it)
    into the optimizer of a sharded model: each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {"state": {names[i]: s for i, s in state["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
