"""A DiLoCo worker as the Trainer sees it: one more strategy of distributed/parallel.py. Inside the
worker its `inner` strategy (one process, or DDP under torchrun) trains as ever; after every H-th
optimizer step torchft's DiLoCo takes the outer step with the other workers (torchft_adapter.py).
It also draws each worker its own batches, counts what crosses the network (comm_bytes, from the
algorithm's own figures: a ring all-reduce of S bytes sends 2(n-1)/n x S per worker), and keeps
the outer state in checkpoints.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, ContextManager

import torch
import torch.nn as nn

from mingpt.distributed import Place
from mingpt.distributed.diloco import LIGHTHOUSE_ENV, batch_seed, check, config_hash, mismatch, worker_id
from mingpt.distributed.diloco import torchft_adapter as adapter
from mingpt.utils import CfgNode, ConfigError

log = logging.getLogger(__name__)


class DiLoCo:
    """The Trainer's strategy (parallel.py's interface) for a DiLoCo worker."""

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
        self.manager: adapter.CountingManager | None = None
        self.outer: adapter.OuterLoop | None = None
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

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
        return self.inner.full_state(model, optimizer)

    def optimizer_state_loader(self, model: nn.Module, optimizer: torch.optim.Optimizer
                               ) -> Callable[[dict], None] | None:
        return self.inner.optimizer_state_loader(model, optimizer)

    # what DiLoCo adds
    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
              live_state: Callable[[], dict], load_live_state: Callable[[dict], None]) -> None:
        """Join the workers (a torchft manager) and hook the outer loop on the optimizer's steps.
        A peer healing from this worker gets its live state with the config hash, and a state of
        other settings is refused before anything of it is loaded."""
        c, mine = self.config, self.config_hash
        self._base_seed = generator.initial_seed()

        def save() -> dict:
            return {"config_hash": mine, **live_state()}

        def load(state: dict) -> None:
            if state.get("config_hash") != mine:
                raise ConfigError(mismatch(mine, state.get("config_hash")))
            load_live_state(state)
            self._iterations_healed_over += state["iter_num"] - self._drawn_iteration

        self.manager = adapter.connect(self.place, c, mine, self.worker, save, load)
        self.outer = adapter.OuterLoop(self.manager, split_into_fragments(model, c.fragments), optimizer, c)
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
        outer_meta, tensors = self.outer.state()
        meta = {**outer_meta, "manager": self.manager.state_dict(), "config_hash": self.config_hash,
                "iterations_healed_over": self._iterations_healed_over,
                **{k: v for k, v in self.counters(0).items() if k != "inner_comm_bytes"}}
        return {"diloco": meta}, tensors

    def load_checkpoint_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        saved = meta.get("diloco")
        if saved is None:
            raise ConfigError("this checkpoint was saved without diloco; resume it without --diloco.sync_every")
        if saved["config_hash"] != self.config_hash:
            log.warning(f"resuming a DiLoCo worker whose shared settings changed (config {saved['config_hash']} "
                        f"-> {self.config_hash}): every worker must resume with the same")
        self.outer.load_state(saved, tensors)
        self.manager.load_state_dict(saved["manager"])
        self._comm_before, self._syncs_before = saved["comm_bytes"], saved["syncs"]
        self._iterations_healed_over = saved.get("iterations_healed_over", 0)

    def close(self) -> None:
        if self.outer is not None:
            self.outer.close()
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
