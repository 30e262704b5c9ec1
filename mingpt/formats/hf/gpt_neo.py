"""GPT-Neo (Hugging Face model_type "gpt_neo", GPTNeoForCausalLM) <-> mingpt: configs and tensors.

GPT-Neo is GPT-2 with GPT-3's alternating global and local layers and three differences mingpt
names in its config: attention_scale=1.0 (q k^T is not divided by sqrt(head_dim)), qkv_bias=False
(separate q_proj, k_proj, v_proj without biases) and window_size (a local query i sees keys
i - window_size + 1 .. i). The tensors, all nn.Linear (out, in) as in mingpt, so none transposed:
    transformer.h.i.attn.attention.{q,k,v}_proj.weight -> transformer.h.i.attn.c_attn.weight
        (concatenated along the output dimension in q, k, v order: mingpt's one fused matmul)
    transformer.h.i.attn.attention.out_proj            -> transformer.h.i.attn.c_proj
    everything else (wte, wpe, ln_1, ln_2, mlp.c_fc, mlp.c_proj, ln_f, lm_head): the same names
config.json's attention_types, e.g. [[["global", "local"], 12]] (the pair 12 times: 24 layers),
becomes attention_pattern ("global", "local"). Old checkpoints carry the mask buffers
attn.attention.bias / masked_bias, which we drop.
"""
from __future__ import annotations

from typing import Any

import torch

from mingpt.formats.hf.common import GELU_TANH, differing_part, refusal, with_transformer_prefix

MODEL_TYPE = "gpt_neo"
NAME = "GPT-Neo"
HUB_MODELS = {
    "EleutherAI/gpt-neo-125m": "EleutherAI/gpt-neo-125m",
    "EleutherAI/gpt-neo-1.3B": "EleutherAI/gpt-neo-1.3B",
    "EleutherAI/gpt-neo-2.7B": "EleutherAI/gpt-neo-2.7B",
}
TOKENIZER = "gpt2"  # EleutherAI trained GPT-Neo on GPT-2's BPE: mingpt's own, nothing to fetch
RUNS = "GPT-Neo as EleutherAI released it"
KINDS = ("global", "local")  # the attention types transformers (and mingpt) know
IGNORED_SUFFIXES = (".attn.attention.bias", ".attn.attention.masked_bias")
QKV = ("q_proj", "k_proj", "v_proj")  # in the order of c_attn's output
PARTS = {"norm": "layernorm", "norm_position": "pre", "position_encoding": "learned",
         "activation": "gelu_tanh", "attention_scale": 1.0, "qkv_bias": False}


def config_from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """mingpt model config values from an HF GPT-Neo config.json (missing keys take GPTNeoConfig's
    defaults), refusing what mingpt cannot run exactly."""
    if hf.get("activation_function", "gelu_new") not in GELU_TANH:
        raise refusal(where, f"activation_function {hf['activation_function']!r} is not the tanh "
                             f"GELU ({' or '.join(GELU_TANH)})", RUNS)
    if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise refusal(where, f"layer_norm_epsilon is {hf['layer_norm_epsilon']}, not 1e-5", RUNS)
    n_embd, n_layer = hf.get("hidden_size", 2048), hf.get("num_layers", 24)
    if hf.get("intermediate_size") not in (None, 4 * n_embd):
        raise refusal(where, f"intermediate_size is {hf['intermediate_size']}, not 4 * hidden_size "
                             f"= {4 * n_embd}", RUNS)
    window = hf.get("window_size", 256)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise refusal(where, f"window_size is {window!r}, not a positive integer", RUNS)
    layers = expand_attention_types(hf.get("attention_types", [[["global", "local"], 12]]), where)
    if len(layers) != n_layer:
        raise refusal(where, f"attention_types describe {len(layers)} layers but num_layers is "
                             f"{n_layer}", RUNS)
    return dict(
        model_type=None,
        n_layer=n_layer,
        n_head=hf.get("num_heads", 16),
        n_embd=n_embd,
        vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("max_position_embeddings", 2048),
        embd_pdrop=float(hf.get("embed_dropout", 0.0)),
        resid_pdrop=float(hf.get("resid_dropout", 0.0)),
        attn_pdrop=float(hf.get("attention_dropout", 0.0)),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        attention_pattern=period(layers),
        window_size=window,
        **PARTS,
    )


def expand_attention_types(attention_types: Any, where: str) -> list[str]:
    """[[["global", "local"], 2], [["global"], 1]] -> ["global", "local", "global", "local", "global"]:
    each entry is a list of types repeated its count times, one type per layer."""
    shape = "a list of [[types...], count] pairs, e.g. [[['global', 'local'], 12]]"
    if not isinstance(attention_types, list):
        raise refusal(where, f"attention_types is {attention_types!r}, not {shape}", RUNS)
    layers = []
    for entry in attention_types:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)
                and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0):
            raise refusal(where, f"attention_types entry {entry!r} is not [[types...], count] "
                                 f"({shape})", RUNS)
        for kind in entry[0]:
            if kind not in KINDS:
                raise refusal(where, f"attention type {kind!r} in attention_types is not one of "
                                     f"{', '.join(map(repr, KINDS))}", RUNS)
        layers += entry[0] * entry[1]
    return layers


def period(layers: list[str]) -> tuple[str, ...]:
    """The shortest pattern that, tiled (layer i gets pattern[i % len]), gives every layer's type:
    ["global", "local", "global", "local"] -> ("global", "local"); ["local"] * 3 -> ("local",)."""
    for p in range(1, len(layers) + 1):
        if all(kind == layers[i % p] for i, kind in enumerate(layers)):
            return tuple(layers[:p])
    return ()  # no layers: resolve_config refuses n_layer=0 with its own message


def attention_types(pattern: tuple[str, ...], n_layer: int) -> list:
    """The inverse of expand_attention_types for mingpt's tiled pattern: ("global", "local") over
    5 layers -> [[["global", "local"], 2], [["global"], 1]]."""
    full, rest = divmod(n_layer, len(pattern))
    return ([[list(pattern), full]] if full else []) + ([[list(pattern[:rest]), 1]] if rest else [])


def to_mingpt(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT-Neo tensors under mingpt's names: q, k, v fused into c_attn, out_proj as c_proj.

    A layer lacking one of q/k/v keeps the others under their own names, so that the name check
    reports both the missing c_attn and what came instead."""
    state: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}  # "transformer.h.0.attn." -> {"q_proj": ...}
    for key, tensor in hf_state.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        name = with_transformer_prefix(key)
        if ".attn.attention." in name:
            layer, part = name.split(".attention.", 1)  # "transformer.h.0.attn", "q_proj.weight"
            proj, _, what = part.partition(".")
            if proj in QKV and what == "weight":
                qkv.setdefault(f"{layer}.", {})[proj] = tensor
                continue
            name = f"{layer}.c_proj.{what}" if proj == "out_proj" else name
        state[name] = tensor
    for layer, parts in qkv.items():
        if all(p in parts for p in QKV):
            state[f"{layer}c_attn.weight"] = torch.cat([parts[p] for p in QKV], dim=0)
        else:
            state.update({f"{layer}attention.{p}.weight": t for p, t in parts.items()})
    return state


def mismatch(config: Any) -> str | None:
    """The first part of a mingpt config that GPT-Neo does not have, or None if GPT-Neo describes
    it (any pattern of global and local layers)."""
    return differing_part(config, PARTS)


def from_mingpt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mingpt tensors under HF GPT-Neo's names (the inverse of to_mingpt): c_attn split into
    q, k, v (cloned: safetensors refuses tensors that share memory)."""
    out = {}
    for name, tensor in state.items():
        if name.endswith(".attn.c_attn.weight"):
            layer = name.removesuffix("c_attn.weight")
            for proj, part in zip(QKV, tensor.chunk(3, dim=0)):
                out[f"{layer}attention.{proj}.weight"] = part.clone()
        elif ".attn.c_proj." in name:
            out[name.replace(".attn.c_proj.", ".attn.attention.out_proj.")] = tensor.contiguous()
        else:
            out[name] = tensor.contiguous()
    return out


def config_to_hf(config: Any, dtype: str) -> dict[str, Any]:
    """The HF gpt_neo config.json describing a mingpt config that `mismatch` accepted."""
    c = config
    gpt2_vocab = c.vocab_size >= 50257  # GPT-2's BPE (maybe padded): <|endoftext|> is 50256
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["GPTNeoForCausalLM"],
        "activation_function": "gelu_new",
        "num_layers": c.n_layer,
        "num_heads": c.n_head,
        "hidden_size": c.n_embd,
        "intermediate_size": None,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.block_size,
        "attention_types": attention_types(tuple(c.attention_pattern), c.n_layer),
        "window_size": c.window_size,
        "embed_dropout": c.embd_pdrop,
        "resid_dropout": c.resid_pdrop,
        "attention_dropout": c.attn_pdrop,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": 50256 if gpt2_vocab else None,
        "eos_token_id": 50256 if gpt2_vocab else None,
        "torch_dtype": dtype,
        "use_cache": True,
    }
