"""The Trainer's settings, in one place: each key's default, what it may hold (a Setting: its
choices or its range, which CfgNode.check enforces) and what it means; and the few checks that
need more than one key, or what the Trainer was handed besides its config.

The loop's own settings come first, then the stopping conditions (stopping.py), the optimizer and
its schedule (optim.py, schedule.py, muon.py), evaluation, and what the run writes.
"""
from __future__ import annotations

from typing import Any

from mingpt.training.muon import NS_DTYPES
from mingpt.training.optim import OPTIMIZERS
from mingpt.training.runtime import CHOICES, DTYPES, dtype_name
from mingpt.training.schedule import COOLDOWN_SHAPES, SCHEDULES
from mingpt.utils import CfgNode, Setting


def trainer_config() -> CfgNode:
    """Trainer.get_default_config(): minGPT's eight keys (device, num_workers, max_iters,
    batch_size, learning_rate, betas, weight_decay, grad_norm_clip) and what mingpt adds."""
    return CfgNode(**_loop_settings(), **_optimizer_settings(), **_evaluation_and_output_settings())


def _loop_settings() -> dict[str, Any]:
    return dict(
        device="auto",  # 'auto' picks cuda, then mps, then cpu (under torchrun: cuda:LOCAL_RANK)
        num_workers=Setting(0, min=0),  # DataLoader workers, only for per-example datasets
        max_iters=Setting(None, kind=int, min=0),  # None trains until stopped
        # end the run early (None: off): at the first evaluation whose val loss is <= target_val_loss,
        # or at the iteration by which the run has taken max_seconds (evaluations included; a
        # resumed run's seconds go on from its checkpoint). Either ends as max_iters does:
        # evaluated and saved. summary.json says which ended it (stop_reason). A wsd cooldown
        # also ends by max_seconds (max_iters may then be None; schedule.lr_at)
        target_val_loss=Setting(None, kind=float),
        max_seconds=Setting(None, kind=float, above=0),
        batch_size=Setting(64, min=1),  # examples per micro-batch, in each process
        grad_accum_steps=Setting(1, min=1),  # micro-batches per optimizer step
        # examples per optimizer step over all processes; if set, grad_accum_steps follows
        # from it: global_batch_size / (batch_size x processes)
        global_batch_size=Setting(None, kind=int, min=1),
        # 'auto': bf16 autocast on CUDA (fp16 with a gradient scaler on cards without bf16),
        # fp32 elsewhere; 'fast': also bf16 on CPUs with native bf16 (AVX-512 BF16, AMX); or
        # 'fp32', 'bf16', 'fp16'. Weights and optimizer state stay fp32
        dtype=Setting("auto", choices=(*CHOICES, *DTYPES)),
        fsdp=False,  # under torchrun: shard weights, gradients and optimizer state (FSDP2), not DDP
    )


def _optimizer_settings() -> dict[str, Any]:
    return dict(
        optimizer=Setting("adamw", choices=OPTIMIZERS),  # 'muon': Muon for the hidden matrices, AdamW for the rest
        learning_rate=Setting(3e-4, above=0),  # (with muon: AdamW's peak rate, for embeddings, head, gains, biases)
        betas=(0.9, 0.95),
        weight_decay=Setting(0.1, min=0),  # applied only where the model's configure_optimizers says
        grad_norm_clip=Setting(1.0, min=0),  # 0 disables clipping
        warmup_iters=Setting(0, min=0),  # linear warmup from 0 to learning_rate
        # 'constant' (minGPT's), 'cosine' (to min_lr_ratio x learning_rate at max_iters) or 'wsd'
        # (constant, then a cooldown to the same floor over the last cooldown_fraction)
        lr_schedule=Setting("constant", choices=SCHEDULES),
        min_lr_ratio=Setting(0.1, min=0, max=1),
        cooldown_fraction=Setting(0.2, min=0, max=1),  # wsd: the last fraction of max_iters that cools down
        cooldown_shape=Setting("linear", choices=COOLDOWN_SHAPES),  # wsd: 'linear' or '1-sqrt'
        muon_lr=Setting(0.02, above=0),  # muon: the matrices' peak rate (the schedule scales it as learning_rate)
        muon_momentum=Setting(0.95, min=0, below=1),  # muon: Nesterov momentum, after the warmup below
        muon_momentum_start=Setting(0.85, min=0, below=1),
        muon_momentum_warmup_iters=Setting(300, min=0),
        muon_weight_decay=Setting(0.0, min=0),  # muon: decoupled weight decay of the matrices
        # muon: Newton-Schulz in 'fp32', 'bf16', 'auto' (bf16 on CUDA only) or 'fast' (bf16 on CUDA
        # and on CPUs with native bf16: AVX-512 BF16, AMX)
        muon_ns_dtype=Setting("auto", choices=tuple(NS_DTYPES)),
    )


def _evaluation_and_output_settings() -> dict[str, Any]:
    return dict(
        eval_interval=Setting(250, min=1),  # iterations between validation evaluations (and checkpoints)
        eval_iters=Setting(50, min=1, optional=True),  # batches per evaluation (None: the whole validation set)
        # a task scored during training, e.g. 'hellaswag' (None: off): its name, which prefixes its
        # scores in metrics.jsonl (hellaswag_acc, ...); the job hands the Trainer the task itself
        # (eval_task=fn, fn(model, device, autocast) -> {score: value}). Every eval_task_interval
        # iterations (None: every eval_interval) and at the last
        eval_task=Setting(None, kind=str),
        eval_task_interval=Setting(None, kind=int, min=1),
        log_interval=Setting(10, min=1),  # iterations between rows of metrics.jsonl
        keep_last=Setting(2, min=0),  # checkpoints kept (saved every eval_interval; the best is kept too)
        compile=Setting(None, choices=(None, True, False)),  # torch.compile the training step (None: on CUDA only)
        progress_bar=True,
        # also send metrics.jsonl's rows to 'tensorboard' and/or 'wandb' (a list, or comma-separated;
        # None: neither). The run folder stays the source of truth (tracking.py; optional extras)
        log_to=None,
    )


def resolve_accumulation(c: CfgNode, world_size: int) -> int:
    """Micro-batches per optimizer step: grad_accum_steps, or what makes up global_batch_size."""
    if c.global_batch_size is None:
        return c.grad_accum_steps
    per_pass = c.batch_size * world_size
    if c.grad_accum_steps != 1 or c.global_batch_size % per_pass:
        raise ValueError(f"trainer.global_batch_size={c.global_batch_size} must be a multiple of "
                         f"trainer.batch_size x processes = {c.batch_size} x {world_size} = {per_pass}, "
                         f"with trainer.grad_accum_steps left at 1 (it follows); change either")
    return c.global_batch_size // per_pass


def resolved_run_config(run_config: dict | None, config: CfgNode, world_size: int, grad_accum_steps: int,
                        amp_dtype: Any, diloco: CfgNode | None) -> dict:
    """What a run's config.json records: the job's whole config (or the trainer's alone), and
    under "resolved" what the environment and the 'auto' settings made of it."""
    resolved = {**(run_config if run_config is not None else {"trainer": config.to_dict()}),
                "resolved": {"world_size": world_size, "grad_accum_steps": grad_accum_steps,
                             "global_batch_size": config.batch_size * grad_accum_steps * world_size,
                             "dtype": dtype_name(amp_dtype)}}
    if diloco is not None and "diloco" not in resolved:
        resolved["diloco"] = diloco.to_dict()
    return resolved


def check_inputs(config: CfgNode, val_dataset: Any, eval_task: Any) -> None:
    """Refuse a Trainer's config that is impossible (CfgNode.check: each key against its Setting)
    or asks for what the Trainer was not given: a target val loss without validation data, an
    eval_task's name without the task, or a task without its name; and trackers (log_to) that
    are unknown or not installed, before any work is done."""
    config.check("trainer.")
    if config.target_val_loss is not None and val_dataset is None:
        raise ValueError(f"trainer.target_val_loss={config.target_val_loss} needs validation data to be "
                         f"reached; pass a val_dataset, or leave the target at None")
    if config.eval_task is not None and eval_task is None:
        raise ValueError(f"trainer.eval_task={config.eval_task!r} needs the task itself: Trainer(..., "
                         f"eval_task=fn) (the jobs train, words and chargpt build it), or leave it at None")
    if eval_task is not None and config.eval_task is None:
        raise ValueError("Trainer(..., eval_task=fn) needs the task's name in trainer.eval_task "
                         "(e.g. 'hellaswag'), which prefixes its scores in metrics.jsonl")
    if config.log_to:
        from mingpt.training import tracking
        tracking.names(config.log_to)  # an unknown tracker, or its package missing: refused now
