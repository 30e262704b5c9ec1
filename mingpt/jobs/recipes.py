"""Recipes: named sets of config overrides, kept in one table, for `mingpt <job> --recipe=NAME`.

A recipe is a combination of settings that belong together (an optimizer with its learning
rates, a schedule, model parts) under one name, so that a run says `--recipe=NAME` instead of a
dozen flags and the combination is written down once. A job's config is built in three layers:

    the job's defaults  <  the recipe's overrides  <  the command line's own --section.key=value
so `mingpt chargpt --recipe=gpt2 --trainer.max_iters=500` trains the gpt2 recipe for 500
iterations. config.json records the recipe's name (its `recipe` key) and every resolved value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mingpt.utils import CfgNode, ConfigError

KEY = "recipe"  # the config key that records the recipe; a job whose config has it takes --recipe


@dataclass(frozen=True)
class Recipe:
    """One line for --help, and the overrides as dotted keys: {"trainer.learning_rate": 6e-4}."""
    about: str
    overrides: dict[str, Any] = field(default_factory=dict)


# the modern parts the speedrun recipes share: each is a config option of its own (model.py, training/)
MODERN_PARTS = {
    "model.position_encoding": "rope", "model.norm": "rmsnorm", "model.qk_norm": True,
    "model.activation": "relu2", "model.bias": False, "model.tie_embeddings": False,
    "model.zero_init_projections": True, "model.logit_softcap": 15.0,
    "trainer.dtype": "fast",  # bf16 autocast where the CPU multiplies bf16 natively, else fp32
    "trainer.optimizer": "muon", "trainer.muon_ns_dtype": "fast", "trainer.learning_rate": 3e-3,
    "trainer.muon_momentum_warmup_iters": 100,
    "trainer.lr_schedule": "wsd", "trainer.cooldown_fraction": 0.4,
    "trainer.min_lr_ratio": 0.0,  # the cooldown ends at 0 (chargpt's 0.3 suits its cosine)
}

RECIPES: dict[str, Recipe] = {
    "gpt2": Recipe("GPT-2 as the jobs train it by default (AdamW, warmup and cosine decay): the "
                   "baseline, by name"),
    # tuned on Tiny Shakespeare's characters with the chargpt job on the 2-core CPU: the figures,
    # and what each part adds, are in benchmarks/RESULTS.md (benchmarks/speedrun.py)
    "speedrun": Recipe(
        "the fastest recipe found to a char-level val loss on the CPU: 3 layers of 128, RoPE, RMSNorm, "
        "QK-norm, ReLU^2, no biases, untied and zero-initialised projections, soft-capped logits, "
        "Muon + AdamW, WSD with a long cooldown to 0, bf16 where the CPU has it, 240 iterations of batch 24, "
        "evaluated once at the end",
        {"model.model_type": None, "model.n_layer": 3, "model.n_head": 4, "model.n_embd": 128,
         **MODERN_PARTS, "trainer.warmup_iters": 20,
         "trainer.batch_size": 24, "trainer.max_iters": 240, "trainer.eval_interval": 240}),
    "five-minutes": Recipe(
        "the lowest char-level val loss found in five minutes on the CPU: the speedrun's parts on 4 "
        "layers of 192 with 128 characters of context, batch 24, trained for max_seconds=300 (the WSD "
        "cooldown is timed to end with it)",
        {"model.model_type": None, "model.n_layer": 4, "model.n_head": 4, "model.n_embd": 192,
         "model.block_size": 128, **MODERN_PARTS, "trainer.warmup_iters": 50, "trainer.batch_size": 24,
         "trainer.max_iters": None, "trainer.max_seconds": 300, "trainer.eval_interval": 1000}),
    # GPT-2 124M on FineWeb-Edu 10B (`mingpt prepare --data.input=hf:HuggingFaceFW/fineweb-edu
    # --data.subset=sample-10BT`), as llm.c's run_gpt2_124M.sh and nanoGPT's reproduction train it:
    # 512 rows of 1024 tokens = 524,288 tokens per step, 64 rows per micro-batch, so 8 GPUs take one
    # micro-batch each and 1 GPU accumulates 8 (2 nodes of 8: --trainer.batch_size=32). 19,073
    # steps are 10B tokens, one pass. The vocabulary is GPT-2's 50,257 (the data's tokenizer;
    # llm.c pads it to 50,304 for speed), so the model saves as a Hugging Face GPT-2. dtype 'auto'
    # and compile None are bf16 autocast and torch.compile on CUDA. README: "Reproducing GPT-2"
    "gpt2-124m": Recipe(
        "GPT-2 124M as published (12/12/768, block 1024, no dropout), 524,288 tokens per step, AdamW "
        "lr 6e-4 (warmup 700, cosine to 10%), weight decay 0.1, 19,073 steps: for FineWeb-Edu 10B on 8 GPUs",
        {
            "model.model_type": "gpt2", "model.n_layer": None, "model.n_head": None, "model.n_embd": None,
            "model.block_size": 1024, "model.tie_embeddings": True,
            "model.embd_pdrop": 0.0, "model.resid_pdrop": 0.0, "model.attn_pdrop": 0.0,
            "trainer.batch_size": 64, "trainer.global_batch_size": 512, "trainer.grad_accum_steps": 1,
            "trainer.max_iters": 19073, "trainer.optimizer": "adamw", "trainer.learning_rate": 6e-4,
            "trainer.warmup_iters": 700, "trainer.lr_schedule": "cosine",
            "trainer.min_lr_ratio": 0.1, "trainer.weight_decay": 0.1, "trainer.betas": (0.9, 0.95),
            "trainer.grad_norm_clip": 1.0, "trainer.dtype": "auto", "trainer.compile": None,
            "trainer.eval_interval": 250, "trainer.eval_iters": 20, "trainer.log_interval": 10,
        }),
}


def get(name: str) -> Recipe:
    """The recipe called name; an unknown name is refused with the list of known ones."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]


def apply(config: CfgNode, name: str, job: str = "this job") -> None:
    """Apply recipe `name` to config (the job's defaults) and record its name in config.recipe.

    Every key is checked before any is set, so a recipe that does not fit the job changes nothing:
    a key the job's config lacks is refused naming the recipe and the key, a value of the wrong
    type naming the recipe too. Apply it before the command line's overrides, so that they win.
    """
    recipe = get(name)
    known = set(config.keys_flat())
    if KEY not in known:
        raise ConfigError(f"mingpt {job} takes no --recipe; the jobs that train do")
    for key in recipe.overrides:
        if key not in known or key == KEY:
            raise ConfigError(f"recipe {name!r} sets {key}, a key mingpt {job} does not have; "
                              f"use the recipe with a job that has it, or drop the key from the recipe")
    try:
        config.merge_from_dict(_nested(recipe.overrides))
    except ConfigError as e:
        raise ConfigError(f"recipe {name!r}: {e}") from None
    setattr(config, KEY, name)


def describe() -> str:
    """The recipes, one line each, for --help."""
    width = max(map(len, RECIPES), default=0)
    lines = ["recipes (--recipe=NAME: applied to the defaults above, before the command line's overrides):"]
    for name, recipe in RECIPES.items():
        changes = ", ".join(f"{key}={value!r}" for key, value in recipe.overrides.items()) or "no overrides"
        lines.append(f"  {name:{width}s}  {recipe.about} [{changes}]")
    return "\n".join(lines)


def _nested(overrides: dict[str, Any]) -> dict:
    """{"trainer.lr": 1} -> {"trainer": {"lr": 1}}: the shape CfgNode.merge_from_dict takes."""
    nested: dict = {}
    for dotted, value in overrides.items():
        *sections, leaf = dotted.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return nested
