"""GPT-2 (Hugging Face model_type "gpt2", GPT2LMHeadModel) <-> mingpt: configs and tensors.

mingpt's GPT already uses Hugging Face's GPT-2 parameter names, so tensors keep their names.
One difference: HF's GPT-2 keeps its linear layers as `Conv1D`, whose weight is stored (in, out),
where nn.Linear stores (out, in); the c_attn, c_proj and c_fc weights are transposed both ways.
HF checkpoints may also carry the causal-mask buffers attn.bias / attn.masked_bias, which we drop
(mingpt builds its mask on the fly).
"""
from __future__ import annotations

from typing import Any

import torch

from mingpt.formats.hf.common import GELU_TANH, from_conv1d, global_only, differing_part, refusal, \
    sizes_from_hf, to_conv1d

MODEL_TYPE = "gpt2"
NAME = "GPT-2"
# the hub names of OpenAI's released GPT-2 weights, and the repositories that hold them
HUB_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
TOKENIZER = "gpt2"  # mingpt's own GPT-2 BPE (bpe.py): nothing to fetch from the model's repository
RUNS = "the original GPT-2 architecture"
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # HF's causal-mask buffers, not weights
# the model config's parts that GPT-2 has (and its attention is global in every layer)
PARTS = {"norm": "layernorm", "norm_position": "pre", "position_encoding": "learned",
         "activation": "gelu_tanh", "attention_scale": None, "qkv_bias": True}


def config_from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """mingpt model config values from an HF GPT-2 config.json, refusing what mingpt can't run.

    Missing keys take GPT2Config's defaults, as transformers itself would.
    """
    if hf.get("activation_function", "gelu_new") not in GELU_TANH:
        raise refusal(where, f"activation_function {hf['activation_function']!r} is not the tanh "
                             f"GELU ({' or '.join(GELU_TANH)})", RUNS)
    if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise refusal(where, f"layer_norm_epsilon is {hf['layer_norm_epsilon']}, not 1e-5", RUNS)
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise refusal(where, f"n_inner is {hf['n_inner']}, not 4 * n_embd = {4 * n_embd}", RUNS)
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise refusal(where, "attention scores are not scaled by 1/sqrt(head_dim) alone", RUNS)
    if hf.get("add_cross_attention", False):
        raise refusal(where, "add_cross_attention is true (an encoder-decoder model)", RUNS)
    return {**sizes_from_hf(hf, vocab_size=50257, block_size=hf.get("n_ctx", 1024)), **PARTS}


def to_mingpt(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT-2 tensors under mingpt's names: the same names, Conv1D weights transposed."""
    return from_conv1d(hf_state, IGNORED_SUFFIXES)


def mismatch(config: Any) -> str | None:
    """The first part of a mingpt config that GPT-2 does not have, or None if GPT-2 describes it."""
    return global_only(config, NAME) or differing_part(config, PARTS)


def from_mingpt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mingpt tensors under HF GPT-2's names (the inverse of to_mingpt)."""
    return to_conv1d(state)


def config_to_hf(config: Any, dtype: str) -> dict[str, Any]:
    """The HF GPT-2 config.json describing a mingpt config that `mismatch` accepted."""
    c = config
    gpt2_vocab = c.vocab_size >= 50257  # GPT-2's BPE (maybe padded): <|endoftext|> is 50256
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["GPT2LMHeadModel"],
        "activation_function": "gelu_new",
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_embd": c.n_embd,
        "n_inner": None,
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "embd_pdrop": c.embd_pdrop,
        "resid_pdrop": c.resid_pdrop,
        "attn_pdrop": c.attn_pdrop,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": 50256 if gpt2_vocab else None,
        "eos_token_id": 50256 if gpt2_vocab else None,
        "torch_dtype": dtype,
        "use_cache": True,
    }
