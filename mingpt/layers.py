"""The parts a GPT's config chooses among: norms, position encodings, activations, attention kinds.

model.py builds every block from these tables once, in __init__, by the names in its config:
    config.norm="layernorm" -> NORMS["layernorm"](n_embd)
    config.position_encoding="learned" -> POSITIONS (added to the tokens), ROTATIONS (of q and k)
    config.activation="gelu_tanh",
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

    def __init__(self, config: CfgNode) -> None:
        super().__init__(config.block_size, config.n_embd)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x (B, T, n_embd) at positions start .. start + T - 1 -> x plus their vectors."""
        pos = torch.arange(start, start + x.size(1), dtype=torch.long, device=x.device)
        return x + super().forward(pos)

    def at_positions(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Like forward, with the positions as a (T,) tensor (static-shape decoding, decode.py)."""
        return x + super().forward(positions)


class NoPositions(nn.Module):
    """Nothing added to the tokens: with rotary embeddings the attention itself sees positions."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return x

    def at_positions(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x


class NoRotation(nn.Module):
    """Queries and keys as they are (learned positions were added to the tokens already)."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def at_positions(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like forward, with the positions as a (T,) tensor (static-shape decoding, decode.py)."""
        return q, k


class Rotary(NoRotation):
    """Rotary position embeddings (RoPE, Su et al. 2021): each pair of a head's dimensions (i, i +
    head_dim/2) of a query or key at position p is rotated by the angle p * base^(-2i/head_dim), so
    q . k depends on the positions only through their difference. Nothing is learned; the cosines
    and sines of the last call's positions are kept (plain attributes, not buffers: they follow the
    inputs' device, and training asks for the same positions every step)."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__(config)
        self.head_dim, self.base = config.n_embd // config.n_head, config.rope_base
        self._angles: tuple = (None, None, None)  # (start, T, device, dtype, inference), cos, sin

    def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, n_head, T, head_dim), k (B, n_kv_head, T, head_dim) at positions start .. start + T - 1."""
        # (angles made under inference_mode cannot be saved for a backward pass: kept apart)
        key = (start, q.size(2), q.device, q.dtype, torch.is_inference_mode_enabled())
        if self._angles[0] != key:
            pos = torch.arange(start, start + q.size(2), device=q.device, dtype=torch.float32)
            self._angles = (key, *self.cos_sin(pos, q.dtype))
        _, cos, sin = self._angles
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)

    def at_positions(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like forward, with the positions as a (T,) tensor: the angles are computed from it
        every call (a few tiny ops), so that a compiled step never branches on a position."""
        cos, sin = self.cos_sin(positions.to(torch.float32), q.dtype)
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The cosines and sines of positions (T,) float32 times each pair's frequency: (T, head_dim / 2)."""
        half = self.head_dim // 2
        inv_freq = self.base ** -(torch.arange(half, device=positions.device, dtype=torch.float32) / half)
        angles = torch.outer(positions, inv_freq)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class ReLUSquared(nn.Module):
    """relu(x)^2: as cheap as ReLU, smooth at 0 from one side, and found to train faster than GELU
    in small GPTs (So et al. 2021, "Primer"; the modded-nanogpt speedrun)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        return r * r  # (not r.square(): its backward, pow's, is several times slower on the CPU)


class SoftCap(nn.Module):
    """cap * tanh(x / cap): logits kept within (-cap, cap), smoothly (Gemma 2; modded-nanogpt)."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        self.cap = cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(x / self.cap)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose gain follows its input's dtype: under bf16 autocast the queries and keys
    that QK-norm normalises are bf16, and PyTorch's fused kernel wants the gain in the same dtype
    (it computes in fp32 inside either way)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


def slow_in_bf16(q: torch.Tensor) -> bool:
    """Whether attention on q should run in fp32 instead: training in bf16 on the CPU, where the
    backward of PyTorch's fused CPU attention kernel is several times slower in bf16 than in fp32
    (its forward alone, for inference, is faster in bf16)."""
    return q.dtype == torch.bfloat16 and q.is_cpu and q.requires_grad and torch.is_grad_enabled()


class GlobalAttention(nn.Module):
    """Causal attention over every earlier position: softmax(q k^T / sqrt(head_dim)) v, where
    position t sees positions <= t. PyTorch's fused kernel does the masking and the scaling."""

    window = None  # every past position: a KV cache keeps them all

    def __init__(self, config: CfgNode) -> None:
        super().__init__()
        self.dropout = config.attn_pdrop
        self.scale = config.attention_scale  # None: 1 / sqrt(head_dim)
        self.grouped = config.n_kv_head != config.n_head  # GQA: each k, v head serves several q heads

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, n_head, T, head_dim); k, v (B, n_head, T_past + T, head_dim) -> like q.
        A KV cache is filled by one prompt (T > 1, causal) then one token at a time (T == 1: the
        single new query may see every cached key, so no mask is needed)."""
        if slow_in_bf16(q):
            with torch.autocast("cpu", enabled=False):
                return self.compute(q.float(), k.float(), v.float()).to(q.dtype)
        return self.compute(q, k, v)

    def compute(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.size(2) > 1, scale=self.scale,
                                              dropout_p=self.dropout if self.training else 0.0,
                                              enable_gqa=self.grouped)


class LocalAttention(GlobalAttention):
    """GPT-3's locally banded attention: position t sees only the window_size positions ending at
    itself, t - window_size + 1 .. t, so a layer costs O(T x window) instead of O(T^2). Alternated
    with global layers (GPT-3, GPT-Neo) information still travels the whole context."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__(config)
        self.window = config.window_size  # a KV cache keeps only this many (a ring)

    def compute(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.size(2) == 1:  # one new token: the cache's ring holds exactly the keys it may see
            assert k.size(2) <= self.window, "a local layer's KV cache must keep only its window"
            return super().compute(q, k, v)
        assert q.size(2) == k.size(2), "a prompt goes into an empty KV cache"
        if self.grouped:  # the band's kernels want one k, v head per q head
            k, v = (t.repeat_interleave(q.size(1) // k.size(1), dim=1) for t in (k, v))
        return banded_attention(q, k, v, self.window, self.scale,
                                dropout_p=self.dropout if self.training else 0.0)


# each builds a norm over `dim` features; bias=False drops LayerNorm's shift
NORMS = {
    "layernorm": lambda dim, bias=True: nn.LayerNorm(dim, bias=bias),
    "rmsnorm": lambda dim, bias=True: RMSNorm(dim, eps=1e-6),  # x / rms(x) * gain: no mean, no shift
    "rmsnorm_no_gain": lambda dim, bias=True: RMSNorm(dim, eps=1e-6, elementwise_affine=False),
}
POSITIONS = {"learned": LearnedPositions, "rope": NoPositions}  # what the token embeddings get
ROTATIONS = {"learned": NoRotation, "rope": Rotary}  # what each attention does to q and k
ACTIVATIONS = {
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's GELU: the tanh approximation
    "gelu": nn.GELU,  # x * Phi(x) with the exact normal CDF (BERT's)
    "relu2": ReLUSquared,
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
    if config.n_head % config.n_kv_head != 0:
        raise ValueError(f"model.n_kv_head={config.n_kv_head} must divide n_head={config.n_head} "
                         f"(each key/value head serves n_head / n_kv_head query heads)")
    if config.position_encoding == "rope" and (config.n_embd // config.n_head) % 2:
        raise ValueError(f"rotary embeddings rotate pairs of dimensions: head_dim="
                         f"{config.n_embd // config.n_head} must be even")
    if config.logit_softcap is not None and not config.logit_softcap > 0:
        raise ValueError(f"model.logit_softcap={config.logit_softcap!r} must be positive (or None: no cap)")
    if config.attention_scale is not None and not config.attention_scale > 0:
        raise ValueError(f"model.attention_scale={config.attention_scale!r} must be positive "
                         f"(or None for 1/sqrt(head_dim))")
