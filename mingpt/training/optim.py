"""The trainer's optimizer: AdamW (the model's configure_optimizers, as minGPT's GPT has), or with
optimizer="muon" Muon for the hidden matrices and AdamW for the rest, stepped as one
OptimizerSet, a torch.optim.Optimizer of its own (its step hooks run, as torchft's DiLoCo needs).
The schedule that sets their rates every iteration is schedule.py's; Muon itself is muon.py.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn as nn

from mingpt.training.muon import Muon
from mingpt.training.schedule import momentum_at
from mingpt.utils import CfgNode

OPTIMIZERS = ("adamw", "muon")


def build(model: nn.Module, c: CfgNode) -> torch.optim.Optimizer:
    """The trainer's optimizer. c.optimizer="adamw": the model's own (configure_optimizers, as
    minGPT's GPT has), else AdamW over every parameter. "muon": an OptimizerSet of Muon for the
    hidden matrices and AdamW for the rest (build_muon); configure_optimizers is then not used."""
    if c.optimizer == "muon":
        return build_muon(model, c)
    if hasattr(model, "configure_optimizers"):
        return model.configure_optimizers(c)
    return torch.optim.AdamW(model.parameters(), lr=c.learning_rate, betas=tuple(c.betas),
                             weight_decay=c.weight_decay)


def parameter_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's parameters by role: its own parameter_roles() (GPT's) if it has one; otherwise
    every 2-D parameter is a "matrix", except nn.Embedding weights and what shares them (a head
    tied to its embedding is the same Parameter), which are "embeddings"; the rest, "vectors".
    (A model of the second kind whose untied output head should take AdamW, as Muon's authors
    advise, says so with a parameter_roles() of its own.)"""
    if hasattr(model, "parameter_roles"):
        roles = model.parameter_roles()
    else:
        tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        params = list(model.parameters())  # (unique: a shared parameter appears once)
        roles = {"matrices": [p for p in params if p.dim() == 2 and id(p) not in tables],
                 "embeddings": [p for p in params if id(p) in tables], "head": [],
                 "vectors": [p for p in params if p.dim() != 2 and id(p) not in tables]}
    given = [id(p) for ps in roles.values() for p in ps]
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in given]
    twice = [name for name, p in model.named_parameters() if given.count(id(p)) > 1]
    if missing or twice:
        raise ValueError(f"{type(model).__name__}.parameter_roles() must name every trainable parameter "
                         f"once: it leaves out {missing} and names twice {twice}")
    return roles


def build_muon(model: nn.Module, c: CfgNode) -> "OptimizerSet":
    """Muon for the matrices (peak lr c.muon_lr, decay c.muon_weight_decay) and AdamW for the
    embeddings, the head and the vectors (peak lr c.learning_rate; weight decay on an untied head
    only, as configure_optimizers decays it). Both follow one schedule: Muon's groups carry
    lr_mult = muon_lr / learning_rate."""
    roles = parameter_roles(model)
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    adamw_groups = [{"params": roles["head"], "weight_decay": c.weight_decay},
                    {"params": roles["embeddings"] + roles["vectors"], "weight_decay": 0.0}]
    members: list[torch.optim.Optimizer] = []
    if roles["matrices"]:
        mult = c.muon_lr / c.learning_rate
        members.append(Muon([{"params": roles["matrices"], "lr_mult": mult}], lr=c.learning_rate * mult,
                            momentum=momentum_at(0, c), weight_decay=c.muon_weight_decay,
                            ns_dtype=c.muon_ns_dtype))
    adamw_groups = [g for g in adamw_groups if g["params"]]
    if adamw_groups:
        members.append(torch.optim.AdamW(adamw_groups, lr=c.learning_rate, betas=tuple(c.betas), fused=fused))
    return OptimizerSet(members)


class OptimizerSet(torch.optim.Optimizer):
    """Several optimizers, each over its own parameter groups, stepped as one: what the loop, the
    gradient scaler, checkpoints and step hooks see is one optimizer whose param_groups are all
    of theirs in order (the same dicts: a rate set here is set there), whose state is theirs, and
    whose state_dict numbers their parameters one after the other."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        # torch's own set-up: the step hooks and the wrapper of step() that runs them (with no members
        # yet: it checks the group it adds against the groups already there)
        self.optimizers: list[torch.optim.Optimizer] = []
        super().__init__(list(dict.fromkeys(p for o in optimizers for g in o.param_groups for p in g["params"])), {})
        self.optimizers = list(optimizers)

    # The groups and the state are read from the members each time: a member's load_state_dict
    # replaces its group dicts, and a list kept here would go stale. (Optimizer.__init__ sets both
    # to empty containers and adds the groups to a list of its own, which is dropped.)
    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return [g for o in self.optimizers for g in o.param_groups]

    @param_groups.setter
    def param_groups(self, groups: list[dict]) -> None:
        if groups:
            raise AttributeError("an OptimizerSet's parameter groups are its members': set theirs")

    @property
    def state(self) -> Mapping:  # type: ignore[override]
        return _MemberStates(self.optimizers)

    @state.setter
    def state(self, state: dict) -> None:
        if state:
            raise AttributeError("an OptimizerSet's state is its members': set theirs")

    @torch.no_grad()
    def step(self, closure=None) -> None:  # type: ignore[override]
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:  # type: ignore[override]
        state, groups, offset = {}, [], 0
        for optimizer in self.optimizers:
            sd = optimizer.state_dict()
            state.update({offset + i: s for i, s in sd["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:  # type: ignore[override]
        """Each member takes its groups (in order) and their parameters' state. The keys are left
        as they are: torch's load_state_dict matches them to parameters by position in the groups,
        whether they are numbers (ours) or names (what FSDP2's set_optimizer_state_dict hands in)."""
        groups = list(state_dict["param_groups"])
        for optimizer in self.optimizers:
            own = [groups.pop(0) for _ in optimizer.param_groups]
            keys = {k for g in own for k in g["params"]}
            optimizer.load_state_dict({"state": {k: s for k, s in state_dict["state"].items() if k in keys},
                                       "param_groups": own})


class _MemberStates(Mapping):
    """The members' per-parameter states, read as one mapping (parameter -> its state)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def __getitem__(self, p: torch.Tensor) -> dict:
        for optimizer in self.optimizers:
            if p in optimizer.state:
                return optimizer.state[p]
        raise KeyError(p)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (p for o in self.optimizers for p in o.state)

    def __len__(self) -> int:
        return sum(len(o.state) for o in self.optimizers)
