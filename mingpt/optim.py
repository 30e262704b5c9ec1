"""Optimizers and their schedules, apart from the training loop.

build() makes the trainer's optimizer: AdamW (the model's configure_optimizers, as minGPT's GPT
has), or with optimizer="muon" Muon for the hidden matrices and AdamW for the rest, stepped as one
OptimizerSet. The schedule is a function of the iteration: lr_at (warmup, then constant, cosine or
warmup-stable-decay) and momentum_at (Muon's momentum warmup); apply_schedule sets both on the
optimizer each iteration. Each parameter group may carry "lr_mult": its learning rate is the
schedule's times that multiplier, so groups of different optimizers share one schedule.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn as nn

from mingpt.utils import CfgNode, cpu_multiplies_bf16

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
COOLDOWN_SHAPES = ("linear", "1-sqrt")
NS_DTYPES = {"auto": None, "fast": None, "fp32": torch.float32, "bf16": torch.bfloat16}


# -- schedules ---------------------------------------------------------------------------------------
def lr_at(it: int, c: CfgNode, time_fraction: float | None = None) -> float:
    """Learning rate of iteration `it`: linear warmup over c.warmup_iters, then constant, or with
    c.lr_decay a decay to the floor c.min_lr_ratio x c.learning_rate, reached at c.max_iters:
        "cosine"  half a cosine from the end of the warmup to max_iters
        "wsd"     warmup-stable-decay: constant until the last c.cooldown_fraction of max_iters,
                  then a cooldown, "linear" or "1-sqrt" (c.cooldown_shape). Until the cooldown
                  the rate does not depend on max_iters, so a run can be extended; "1-sqrt"
                  falls fast at first, then slowly (Hagele et al. 2024 found it ends lower)
    Example, wsd with max_iters=100, cooldown_fraction=0.2: the full rate up to iteration 80; at
    90 the rate has come halfway down to the floor (linear), or 1 - sqrt(0.5) = 71% (1-sqrt).

    time_fraction (the share of a time budget, c.max_seconds, already used) moves a WSD cooldown
    too: it runs over the last cooldown_fraction of the iterations or of the time, whichever is
    further along, so a run stopped by its budget has cooled down by then on any machine (and
    max_iters may be None). The iterations' schedule is then no longer a function of `it` alone."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / c.warmup_iters
    timed = c.lr_schedule == "wsd" and time_fraction is not None
    if not c.lr_decay or (c.max_iters is None and not timed):
        return c.learning_rate
    min_lr = c.learning_rate * c.min_lr_ratio
    if c.lr_schedule == "wsd":
        progress = 0.0
        if c.max_iters is not None:
            start = max(c.warmup_iters, c.max_iters - round(c.cooldown_fraction * c.max_iters))
            progress = min(1.0, max(0, it - start) / max(1, c.max_iters - start))
        if timed:
            into = time_fraction - (1 - c.cooldown_fraction)  # (of the budget, since the cooldown began)
            progress = max(progress, min(1.0, max(0.0, into) / max(c.cooldown_fraction, 1e-9)))
        left = 1.0 - (progress if c.cooldown_shape == "linear" else math.sqrt(progress))
        return min_lr + left * (c.learning_rate - min_lr)
    progress = min(1.0, (it - c.warmup_iters) / max(1, c.max_iters - c.warmup_iters))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.learning_rate - min_lr)


def momentum_at(it: int, c: CfgNode) -> float:
    """Muon's momentum at iteration `it`: from c.muon_momentum_start linearly up to c.muon_momentum
    over the first c.muon_momentum_warmup_iters (as modded-nanogpt does: early gradients change
    fast, and a long memory of them would mislead), then constant."""
    if it >= c.muon_momentum_warmup_iters:
        return c.muon_momentum
    frac = it / c.muon_momentum_warmup_iters
    return c.muon_momentum_start + frac * (c.muon_momentum - c.muon_momentum_start)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group the schedule's lr, times the group's "lr_mult" (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def apply_schedule(optimizer: torch.optim.Optimizer, it: int, c: CfgNode, lr: float | None = None) -> float:
    """Set iteration `it`'s schedule on optimizer: every group's lr (lr_at, or `lr` if given,
    times the group's lr_mult) and the momentum of every Muon in it (momentum_at). Returns lr."""
    lr = lr_at(it, c) if lr is None else lr
    set_lr(optimizer, lr)
    for member in getattr(optimizer, "optimizers", [optimizer]):
        if isinstance(member, Muon):
            for group in member.param_groups:
                group["momentum"] = momentum_at(it, c)
    return lr


def config_problems(c: CfgNode) -> list[str]:
    """What is wrong with the trainer's optimizer and schedule settings (for check_config)."""
    problems = []

    def one_of(key: str, valid: Iterable[str]) -> None:
        if getattr(c, key) not in valid:
            problems.append(f"trainer.{key}={getattr(c, key)!r} must be one of {', '.join(map(repr, valid))}")

    one_of("optimizer", OPTIMIZERS)
    one_of("lr_schedule", SCHEDULES)
    one_of("cooldown_shape", COOLDOWN_SHAPES)
    one_of("muon_ns_dtype", NS_DTYPES)
    for key, low, high, example in (("cooldown_fraction", 0, 1, 0.2), ("min_lr_ratio", 0, 1, 0.1)):
        if not low <= getattr(c, key) <= high:
            problems.append(f"trainer.{key}={getattr(c, key)} must be between {low} and {high} (e.g. {example})")
    for key in ("muon_momentum", "muon_momentum_start"):
        if not 0 <= getattr(c, key) < 1:
            problems.append(f"trainer.{key}={getattr(c, key)} must be in [0, 1) (e.g. 0.95)")
    for key in ("warmup_iters", "muon_momentum_warmup_iters", "weight_decay", "muon_weight_decay"):
        if getattr(c, key) < 0:
            problems.append(f"trainer.{key}={getattr(c, key)} must be >= 0")
    if c.muon_lr <= 0:
        problems.append(f"trainer.muon_lr={c.muon_lr} must be > 0 (e.g. 0.02)")
    return problems


# -- building the optimizer --------------------------------------------------------------------------
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


def ns_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype that Muon's ns_dtype setting `name` means on `device` (see Muon)."""
    if NS_DTYPES[name] is not None:
        return NS_DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if name == "fast" and device.type == "cpu" and cpu_multiplies_bf16() else torch.float32


# -- Muon ------------------------------------------------------------------------------------------
# The quintic Newton-Schulz iteration of Keller Jordan's Muon: X <- aX + b(XX^T)X + c(XX^T)^2 X maps
# each singular value s to a s + b s^3 + c s^5. These coefficients are not the ones that converge
# to 1 (those are slow near 0); they lift small values as steeply as possible (slope a at 0) and
# leave every singular value in a band around 1 (about 0.7 to 1.2) after 5 steps: near enough.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """About U V^T for g = U S V^T: g with every singular value moved near 1, by `steps` quintic
    Newton-Schulz iterations computed in `dtype` (bf16 is fast on GPUs, and on CPUs with bf16
    instructions; elsewhere it is emulated and slow). Returns g's shape and dtype."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide form: X X^T is then the smaller square
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # Frobenius norm >= the largest singular value
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


def _is_dtensor(t: torch.Tensor) -> bool:
    """Whether t is a sharded (FSDP2) tensor."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D weight matrices (hidden layers only:
    embeddings, heads, gains and biases take AdamW). Each step:
        buf    <- momentum x buf + (1 - momentum) x grad       (an average of the gradients)
        update <- (1 - momentum) x grad + momentum x buf        (Nesterov; buf without it)
        p      <- p x (1 - lr x weight_decay) - lr x sqrt(max(1, rows / cols)) x orthogonalize(update)
    Orthogonalising gives every direction of the update the same size, so rare directions are not
    drowned by the dominant ones; sqrt(max(1, rows / cols)) keeps tall matrices' updates as large
    per entry as square ones'. (The buffer is an average, not a sum, so that changing momentum
    while it warms up does not change its scale; orthogonalize normalises either way.)

    ns_dtype: the Newton-Schulz iteration's dtype, "fp32", "bf16", "auto" (bf16 on CUDA, fp32
    elsewhere: the same result on every CPU) or "fast" (bf16 also on a CPU that multiplies bf16
    natively, with AVX-512 BF16 or AMX, where it is faster; fp32 on the others, where bf16 is slow).
    (torch.optim.Muon always iterates in bf16.) The trainer sets lr and momentum every iteration
    (apply_schedule).

    Sharded parameters (FSDP2's DTensors) are orthogonalised whole: each rank gathers the full
    update (full_tensor(), an all-gather), orthogonalises it (every rank the same matrix: the work
    is repeated, not split) and keeps its own shard. The momentum buffer stays sharded.
    """

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_dtype: str = "auto") -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum={momentum} must be in [0, 1)")
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"Muon ns_dtype={ns_dtype!r} must be one of {', '.join(map(repr, NS_DTYPES))}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, ns_dtype=ns_dtype)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got a parameter of shape "
                                     f"{tuple(p.shape)}: give it to AdamW")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            grads = [p.grad for p in params]
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
            dtype = ns_dtype(group["ns_dtype"], params[0].device)
            for p, update in zip(params, self._orthogonalized_all(updates, group["ns_steps"], dtype)):
                if decay:
                    p.mul_(1 - lr * decay)
                rows, cols = p.shape
                p.add_(update, alpha=-lr * math.sqrt(max(1.0, rows / cols)))
        return loss

    @classmethod
    def _orthogonalized_all(cls, updates: list[torch.Tensor], steps: int, dtype: torch.dtype) -> list[torch.Tensor]:
        """Every update orthogonalised; those of one shape together, as one batched iteration (a
        GPT's blocks have four shapes: a few large products instead of many small ones)."""
        out: list[torch.Tensor | None] = [None] * len(updates)
        by_shape: dict[tuple, list[int]] = {}
        for i, update in enumerate(updates):
            if _is_dtensor(update):
                out[i] = cls._orthogonalized(update, steps, dtype)
            else:
                by_shape.setdefault((tuple(update.shape), update.device), []).append(i)
        for indices in by_shape.values():
            stacked = orthogonalize(torch.stack([updates[i] for i in indices]), steps, dtype)
            for i, result in zip(indices, stacked.unbind(0)):
                out[i] = result
        return out

    @staticmethod
    def _orthogonalized(update: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
        """orthogonalize(update); a sharded update is gathered whole first and then cut back into
        this rank's shard (src_data_rank=None: every rank has the whole result, none is sent)."""
        if not _is_dtensor(update):
            return orthogonalize(update, steps, dtype)
        from torch.distributed.tensor import distribute_tensor

        whole = orthogonalize(update.full_tensor(), steps, dtype)
        return distribute_tensor(whole, update.device_mesh, update.placements, src_data_rank=None)


# -- several optimizers as one -------------------------------------------------------------------------
class OptimizerSet(torch.optim.Optimizer):
    """Several optimizers, each over its own parameter groups, stepped as one: what the loop, the
    gradient scaler and checkpoints see is one optimizer whose param_groups are all of theirs in
    order, and whose state_dict numbers their parameters one after the other."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        # (torch.optim.Optimizer.__init__ is not called: the members hold the state)
        self.defaults: dict[str, Any] = {}
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}

    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:  # type: ignore[override]
        return {p: s for o in self.optimizers for p, s in o.state.items()}

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
