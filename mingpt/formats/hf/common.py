"""What the model families of hf/ share: refusing a config value, and the last steps of turning
Hugging Face tensors into mingpt's state dict (the tied head, every name and shape checked).

Each family (gpt2.py, openai_gpt.py, gpt_neo.py) only renames and reshapes its own tensors;
these helpers then make sure the result is exactly the model its config.json describes.
"""
from __future__ import annotations

from typing import Any

import torch

GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # HF's names of the tanh GELU, mingpt's "gelu_tanh"


def refusal(where: str, what: str, runs: str) -> ValueError:
    """The one-line error for a config.json value mingpt cannot run exactly:
    '<file>: <key> is <value>, not <what mingpt has>; mingpt only runs <runs>'."""
    return ValueError(f"{where}: {what}; mingpt only runs {runs}")


def with_transformer_prefix(key: str) -> str:
    """HF files come in two flavours: the LM-head model's ("transformer.h.0...") and the bare
    model's ("h.0...", as OpenAI's and EleutherAI's first uploads); mingpt's names are the first."""
    return key if key.startswith("transformer.") or key == "lm_head.weight" else f"transformer.{key}"


# GPT-2's and GPT-1's linear layers are Conv1D, whose weight is stored (in, out), nn.Linear's (out, in)
CONV1D_SUFFIXES = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")  # in attn and mlp


def from_conv1d(hf_state: dict[str, torch.Tensor], ignored: tuple[str, ...],
                renames: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """A Conv1D family's tensors (GPT-2, GPT-1) under mingpt's names: buffers ending in `ignored`
    dropped, the "transformer." prefix added where missing, name prefixes renamed (HF's -> ours),
    Conv1D weights transposed."""
    state = {}
    for key, tensor in hf_state.items():
        if key.endswith(ignored):
            continue
        name = with_transformer_prefix(key)
        for theirs, ours in (renames or {}).items():
            if name.startswith(theirs):
                name = ours + name[len(theirs):]
        conv1d = name.endswith(CONV1D_SUFFIXES) and tensor.dim() == 2  # else the shape check fails
        state[name] = tensor.t() if conv1d else tensor
    return state


def to_conv1d(state: dict[str, torch.Tensor], renames: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """mingpt tensors under a Conv1D family's names (the inverse of from_conv1d)."""
    out = {}
    for name, tensor in state.items():
        for theirs, ours in (renames or {}).items():
            if name.startswith(ours):
                name = theirs + name[len(ours):]
        out[name] = (tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor).contiguous()
    return out


def sizes_from_hf(hf: dict[str, Any], vocab_size: int, block_size: int) -> dict[str, Any]:
    """The model config values GPT-2's and GPT-1's config.json name alike (missing keys take the
    defaults transformers uses; the vocabulary and context sizes are the family's own)."""
    return dict(
        model_type=None,
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=hf.get("n_embd", 768),
        vocab_size=hf.get("vocab_size", vocab_size),
        block_size=hf.get("n_positions", block_size),
        embd_pdrop=hf.get("embd_pdrop", 0.1),
        resid_pdrop=hf.get("resid_pdrop", 0.1),
        attn_pdrop=hf.get("attn_pdrop", 0.1),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        attention_pattern=("global",),
    )


def global_only(config: Any, family: str) -> str | None:
    """What a family with global attention only (GPT-2, GPT-1) cannot describe, else None."""
    if set(config.attention_pattern) != {"global"}:
        return f"attention_pattern={config.attention_pattern!r} has local layers, which {family} has not"
    return None


def finish_state(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], where: str,
                 tied: bool, family: str) -> dict[str, torch.Tensor]:
    """Tie (or keep) the head, check every name and shape against `expected` (mingpt's parameter
    names and shapes for this config), and return float32 contiguous tensors.

    `state` is already in mingpt's names. A tied model's file may omit lm_head.weight (transformers
    re-ties it on load); if it has one that differs from wte, transformers would not use it either.
    """
    head = state.pop("lm_head.weight", None)
    wte = state.get("transformer.wte.weight")
    if tied and wte is not None:
        if head is not None and not (head.shape == wte.shape and torch.equal(head, wte)):
            raise ValueError(f"{where}: lm_head differs from the token embedding wte although "
                             f"tie_word_embeddings is true, so transformers itself would not use it; "
                             f"this model cannot be loaded as it was trained")
        state["lm_head.weight"] = wte
    elif head is not None:
        state["lm_head.weight"] = head
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match a {family} of this config.json: "
                         f"missing {missing[:5] or 'none'}, unexpected {unexpected[:5] or 'none'}"
                         f"{' (and more)' if len(missing) > 5 or len(unexpected) > 5 else ''}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(f"{where}: {name} has shape {tuple(state[name].shape)} but this "
                             f"config.json needs {shape}; config and weights do not belong together")
    # mingpt computes in float32; contiguous() because transposes and slices are views
    return {name: t.to(torch.float32).contiguous() for name, t in state.items()}


def differing_part(config: Any, parts: dict[str, Any]) -> str | None:
    """The first of `parts` (config key -> the family's value) on which config differs, worded
    'attention_scale=None, not 1.0'; None if the family has every one of them."""
    if config.n_kv_head != config.n_head:
        return f"n_kv_head={config.n_kv_head} (grouped-query attention), not n_head={config.n_head}"
    for key, value in {**NO_MODERN_OPTIONS, **parts}.items():
        if getattr(config, key) != value:
            return f"{key}={getattr(config, key)!r}, not {value!r}"
    return None


# options since GPT-2 that none of the families here has (a Llama-style export would be their home)
NO_MODERN_OPTIONS = {"bias": True, "qk_norm": False, "logit_softcap": None}


def dtype_name(tensor: torch.Tensor) -> str:
    """'float32' for config.json's torch_dtype."""
    return str(tensor.dtype).removeprefix("torch.")
