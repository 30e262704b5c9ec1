"""The parts a GPT's config chooses among: norms, position encodings, activations, attention kinds.

model.py builds every block from these tables once, in __init__, by the names in its config:
    config.norm="layernorm" -> NORMS["layernorm"](n_embd)
    config.position_encoding="learned" -> POSITIONS (added to the tokens), ROTATIONS (of q and k),
        both given the positions as a (T,) tensor (the KV cache's, nn/cache.py)
    config.activation="gelu_tanh",
    config.attention_pattern=("global", "local"): layer i does ATTENTIONS[pattern[i % len(pattern)]]
GPT-2's choice is the first entry of each table. A new option is one more small named entry
here: the default path never tests for it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from mingpt.nn.kernels.banded import banded_attention
from mingpt.utils import CfgNode


class LearnedPositions(nn.Embedding):
    """GPT-2's positions: one learned vector per position, added to each token's embedding."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__(config.block_size, config.n_embd)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, T, n_embd) at positions (T,) -> x plus their vectors."""
        return x + super().forward(positions)


class NoPositions(nn.Module):
    """Nothing added to the tokens: with rotary embeddings the attention itself sees positions."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x


class NoRotation(nn.Module):
    """Queries and keys as they are (learned positions were added to the tokens already)."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k


class Rotary(NoRotation):
    """Rotary position embeddings (RoPE, Su et al. 2021): each pair of a head's dimensions (i, i +
    head_dim/2) of a query or key at position p is rotated by the angle p * base^(-2i/head_dim), so
    q . k depends on the positions only through their difference. Nothing is learned: the cosines
    and sines of every position up to block_size are computed once per device and dtype and looked
    up by the positions' tensor (no branch on a position's value: a compiled step can do this too).
    The table is a plain attribute, not a buffer: it follows the inputs' device, and a model built
    on the meta device has nothing to materialise."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__(config)
        self.head_dim, self.base, self.block_size = config.n_embd // config.n_head, config.rope_base, config.block_size
        self._table: tuple = (None, None, None)  # (device, dtype), cos, sin: (block_size, head_dim / 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, n_head, T, head_dim), k (B, n_kv_head, T, head_dim) at positions (T,)."""
        if self._table[0] != (q.device, q.dtype):
            self._table = ((q.device, q.dtype), *self.cos_sin(torch.arange(self.block_size, device=q.device), q.dtype))
        _, cos, sin = self._table
        cos, sin = cos[positions], sin[positions]
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The cosines and sines of positions (T,) times each pair's frequency: (T, head_dim / 2).
        Made outside inference mode, so that a training step may save them for its backward pass
        even when the table was first made while generating."""
        with torch.inference_mode(False), torch.no_grad():
            half = self.head_dim // 2
            inv_freq = self.base ** -(torch.arange(half, device=positions.device, dtype=torch.float32) / half)
            angles = torch.outer(positions.to(torch.float32), inv_freq)
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

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """q (B, n_head, T, head_dim); k, v (B, n_kv_head, T_past + T, head_dim) -> like q.
        Without a mask: causal for T > 1 (training, or a prompt into an empty KV cache), and for
        one new token every key (a KV cache holds only what it may see). A mask (T, keys) says
        which keys each query sees (a static cache: its filled slots, or a local layer's window)."""
        if slow_in_bf16(q):
            with torch.autocast("cpu", enabled=False):
                return self.compute(q.float(), k.float(), v.float(), mask).to(q.dtype)
        return self.compute(q, k, v, mask)

    def compute(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and q.size(2) > 1,
                                              scale=self.scale, dropout_p=self.dropout if self.training else 0.0,
                                              enable_gqa=self.grouped)


class LocalAttention(GlobalAttention):
    """GPT-3's locally banded attention: position t sees only the window_size positions ending at
    itself, t - window_size + 1 .. t, so a layer costs O(T x window) instead of O(T^2). Alternated
    with global layers (GPT-3, GPT-Neo) information still travels the whole context."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__(config)
        self.window = config.window_size  # a KV cache keeps only this many (a ring)

    def compute(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        if mask is not None or q.size(2) == 1:  # the mask is the band; or the ring holds just the window
            assert mask is not None or k.size(2) <= self.window, "a local layer's KV cache keeps only its window"
            return super().compute(q, k, v, mask)
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


def check_parts(config: CfgNode, prefix: str = "model.") -> list[str]:
    """What is wrong with the parts of a model's config together (each key's own values are its
    Setting's to check): the attention pattern, heads that divide the width and the key/value
    heads, and rotary pairs. Keys left at None (not yet resolved from a preset) are skipped."""
    problems = []
    pattern = config.attention_pattern
    if isinstance(pattern, str):  # from the command line: global,local
        pattern = tuple(pattern.split(","))
    if pattern is not None and (not isinstance(pattern, (tuple, list)) or not pattern
                                or any(kind not in ATTENTIONS for kind in pattern)):
        problems.append(f"{prefix}attention_pattern={config.attention_pattern!r} must be a non-empty tuple of "
                        f"{', '.join(map(repr, ATTENTIONS))}, e.g. ('global', 'local')")
    if config.n_embd is None or config.n_head is None:
        return problems
    if config.n_embd % config.n_head != 0:
        problems.append(f"n_embd={config.n_embd} must be divisible by n_head={config.n_head}")
    elif config.position_encoding == "rope" and (config.n_embd // config.n_head) % 2:
        problems.append(f"rotary embeddings rotate pairs of dimensions: head_dim="
                        f"{config.n_embd // config.n_head} must be even")
    if config.n_kv_head is not None and config.n_head % config.n_kv_head != 0:
        problems.append(f"{prefix}n_kv_head={config.n_kv_head} must divide n_head={config.n_head} "
                        f"(each key/value head serves n_head / n_kv_head query heads)")
    return problems
