"""The parts a GPT's config chooses among: norms, position encodings, activations, attention kinds.

model.py builds every block from these tables once, in __init__, by the names in its config:
    config.norm="layernorm" -> NORMS["layernorm"](n_embd)
    config.position_encoding="learned", config.activation="gelu_tanh",
    config.attention_pattern=("global", "local"): layer i does ATTENTIONS[pattern[i % len(pattern)]]
GPT-2's choice is the first entry of each table. A new option is one more small named entry
here: the default path never tests for it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from mingpt.kernels.banded import banded_attention
from mingpt.utils import CfgNode


class LearnedPositions(nn.Embedding):
    """GPT-2's positions: one learned vector per position, added to each token's embedding."""

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x (B, T, n_embd) at positions start .. start + T - 1 -> x plus their vectors."""
        pos = torch.arange(start, start + x.size(1), dtype=torch.long, device=x.device)
        return x + super().forward(pos)


class GlobalAttention(nn.Module):
    """Causal attention over every earlier position: softmax(q k^T / sqrt(head_dim)) v, where
    position t sees positions <= t. PyTorch's fused kernel does the masking and the scaling."""

    window = None  # every past position: a KV cache keeps them all

    def __init__(self, config: CfgNode) -> None:
        super().__init__()
        self.dropout = config.attn_pdrop
        self.scale = config.attention_scale  # None: 1 / sqrt(head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, n_head, T, head_dim); k, v (B, n_head, T_past + T, head_dim) -> like q.
        A KV cache is filled by one prompt (T > 1, causal) then one token at a time (T == 1: the
        single new query may see every cached key, so no mask is needed)."""
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.size(2) > 1, scale=self.scale,
                                              dropout_p=self.dropout if self.training else 0.0)


class LocalAttention(GlobalAttention):
    """GPT-3's locally banded attention: position t sees only the window_size positions ending at
    itself, t - window_size + 1 .. t, so a layer costs O(T x window) instead of O(T^2). Alternated
    with global layers (GPT-3, GPT-Neo) information still travels the whole context."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__(config)
        self.window = config.window_size  # a KV cache keeps only this many (a ring)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.size(2) == 1:  # one new token: the cache's ring holds exactly the keys it may see
            assert k.size(2) <= self.window, "a local layer's KV cache must keep only its window"
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        assert q.size(2) == k.size(2), "a prompt goes into an empty KV cache"
        return banded_attention(q, k, v, self.window, self.scale,
                                dropout_p=self.dropout if self.training else 0.0)


NORMS = {"layernorm": nn.LayerNorm}
POSITIONS = {"learned": LearnedPositions}
ACTIVATIONS = {
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's GELU: the tanh approximation
    "gelu": nn.GELU,  # x * Phi(x) with the exact normal CDF (BERT's)
}
ATTENTIONS = {"global": GlobalAttention, "local": LocalAttention}


def check_choices(config: CfgNode) -> None:
    """Refuse a part that is not in its table, naming the valid ones."""
    for key, table in (("norm", NORMS), ("position_encoding", POSITIONS), ("activation", ACTIVATIONS)):
        if getattr(config, key) not in table:
            raise ValueError(f"model.{key}={getattr(config, key)!r} is not one of {', '.join(map(repr, table))}")
    pattern = config.attention_pattern
    if not isinstance(pattern, (tuple, list)) or not pattern or any(kind not in ATTENTIONS for kind in pattern):
        raise ValueError(f"model.attention_pattern={pattern!r} must be a non-empty tuple of "
                         f"{', '.join(map(repr, ATTENTIONS))}, e.g. ('global', 'local')")
    window = config.window_size
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"model.window_size={window!r} must be a positive integer: how many "
                         f"positions a query of a local layer sees, itself included")
    if config.attention_scale is not None and not config.attention_scale > 0:
        raise ValueError(f"model.attention_scale={config.attention_scale!r} must be positive "
                         f"(or None for 1/sqrt(head_dim))")
