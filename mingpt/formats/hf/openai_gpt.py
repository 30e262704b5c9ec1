"""GPT-1 (Hugging Face model_type "openai-gpt", OpenAIGPTLMHeadModel) <-> mingpt: configs and tensors.

GPT-1 is GPT-2's block with the LayerNorm after each residual sum (mingpt's norm_position="post")
and no final norm. Its tensors differ from mingpt's by name only where the embeddings are:
    tokens_embed -> transformer.wte     positions_embed -> transformer.wpe
    h.i.attn.c_attn / c_proj, h.i.mlp.c_fc / c_proj, h.i.ln_1 / ln_2 -> transformer.h.i.(same)
and, like GPT-2's, its linear layers are Conv1D (weights stored (in, out)): transposed both ways.
The head is tied to tokens_embed. transformers runs afn="gelu" as the tanh approximation of
GELU (its gelu_new, as OpenAI's original code did), so that is mingpt's activation "gelu_tanh".
Checkpoints may carry the causal-mask buffer attn.bias and position_ids, which we drop.
"""
from __future__ import annotations

from typing import Any

import torch

from mingpt.formats.hf.common import from_conv1d, global_only, differing_part, refusal, sizes_from_hf, \
    to_conv1d

MODEL_TYPE = "openai-gpt"
NAME = "GPT-1 (openai-gpt)"
HUB_MODELS = {"openai-gpt": "openai-community/openai-gpt"}
# GPT-1's own BPE (lower-cased, word-final "</w>" marks), read by transformers from these files
TOKENIZER = "openai-gpt"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
RUNS = "the original GPT-1 architecture (afn='gelu')"
IGNORED_SUFFIXES = (".attn.bias", "position_ids")  # buffers: the causal mask, 0 .. n_positions-1
RENAMES = {"transformer.tokens_embed.": "transformer.wte.", "transformer.positions_embed.": "transformer.wpe."}
# afn values of OpenAIGPTConfig -> mingpt's activation (relu and silu have no entry in nn/layers.py)
ACTIVATIONS = {"gelu": "gelu_tanh"}
PARTS = {"norm": "layernorm", "norm_position": "post", "position_encoding": "learned",
         "activation": "gelu_tanh", "attention_scale": None, "qkv_bias": True}


def config_from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """mingpt model config values from an HF openai-gpt config.json (missing keys take
    OpenAIGPTConfig's defaults), refusing what mingpt cannot run exactly."""
    afn = hf.get("afn", "gelu")
    if afn not in ACTIVATIONS:
        raise refusal(where, f"afn is {afn!r}, not 'gelu' (which transformers runs as the tanh "
                             f"GELU, mingpt's gelu_tanh)", RUNS)
    if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise refusal(where, f"layer_norm_epsilon is {hf['layer_norm_epsilon']}, not 1e-5", RUNS)
    return {**sizes_from_hf(hf, vocab_size=40478, block_size=512), **PARTS, "activation": ACTIVATIONS[afn]}


def to_mingpt(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT-1 tensors under mingpt's names: embeddings renamed, Conv1D weights transposed."""
    return from_conv1d(hf_state, IGNORED_SUFFIXES, RENAMES)


def mismatch(config: Any) -> str | None:
    """The first part of a mingpt config that GPT-1 does not have, or None if GPT-1 describes it."""
    return global_only(config, "GPT-1") or differing_part(config, PARTS)


def from_mingpt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mingpt tensors under HF GPT-1's names (the inverse of to_mingpt)."""
    return to_conv1d(state, RENAMES)


def config_to_hf(config: Any, dtype: str) -> dict[str, Any]:
    """The HF openai-gpt config.json describing a mingpt config that `mismatch` accepted."""
    c = config
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["OpenAIGPTLMHeadModel"],
        "afn": "gelu",
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_embd": c.n_embd,
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "embd_pdrop": c.embd_pdrop,
        "resid_pdrop": c.resid_pdrop,
        "attn_pdrop": c.attn_pdrop,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": c.tie_embeddings,
        "torch_dtype": dtype,
    }
