"""Banded causal attention in O(T x window): GPT-3's "locally banded" layers, computed exactly.

Query i sees keys i - window + 1 .. i (itself included). A dense SDPA call with a band mask does
all T x T products and loses the causal fast path, so we cut the sequence into chunks of `window`
queries instead. A query at offset r of chunk j sees two pieces:
    its own chunk's keys 0 .. r                  -> one causal SDPA call, all chunks batched
    the previous chunk's keys r + 1 .. window - 1 -> reversed in time this is causal too: one more
                                                     causal call on the flipped chunks
Each piece's softmax is normalised on its own; its log-sum-exp weighs the two together exactly,
and the backward pass runs each piece's kernel with the merged output and log-sum-exp, which
gives each piece's share of the true gradient. Every call is PyTorch's own fused CPU kernel, on
2 x window keys per query instead of T.

On CUDA the band goes to FlexAttention (compiled, with a block mask that skips blocks outside it);
with attention dropout in training, or where neither kernel is at hand, to `banded_reference`:
the same chunks, through a mask (still O(T x window)).
"""
from __future__ import annotations

import functools
import math

import torch
from torch.nn import functional as F

# PyTorch's fused CPU attention, called directly because SDPA does not hand out the log-sum-exp
_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                     scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention where query i sees keys i - window + 1 .. i; q, k, v (B, n_head, T, head_dim).

    Keys and queries are the same T positions. `scale` multiplies q k^T (None: 1/sqrt(head_dim)).
    """
    T = q.size(2)
    if T <= window:  # the band covers every earlier position: plain causal attention
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)
    if dropout_p > 0.0 or window == 1:  # (a window of 1 would leave the flipped piece no keys)
        return banded_reference(q, k, v, window, scale, dropout_p)
    if q.is_cuda and _has_flex():
        return _flex_banded(q, k, v, window, scale)
    if q.is_cpu and _FLASH is not None:
        return _BandedCPU.apply(q, k, v, window, scale)
    return banded_reference(q, k, v, window, scale)


def band_mask(T: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, T) bool: True where query i may see key j, i.e. i - window < j <= i."""
    i = torch.arange(T, device=device)
    offset = i[:, None] - i[None, :]
    return (offset >= 0) & (offset < window)


def banded_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                     scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """The band by plain tensor ops (autograd does the backward): each chunk of `window` queries
    against its own and the previous chunk's keys, through a mask. O(T x window) memory and work."""
    B, H, T, D = q.shape
    n = -(-T // window)
    qc, kc, vc = (_chunks(x, window, n).view(B, n, H, window, D) for x in (q, k, v))
    previous = (F.pad(x, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1] for x in (kc, vc))  # chunk j-1, zeros for j=0
    keys, values = (torch.cat([p, x], dim=3) for p, x in zip(previous, (kc, vc)))  # (B, n, H, 2w, D)
    scores = (qc @ keys.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(D))
    query = torch.arange(n * window, device=q.device).view(n, 1, window, 1)
    key = (torch.arange(2 * window, device=q.device) - window).view(1, 1, 1, 2 * window) \
        + torch.arange(n, device=q.device).view(n, 1, 1, 1) * window
    visible = (key <= query) & (key > query - window) & (key >= 0)  # (n, 1, w, 2w)
    weights = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
    weights = F.dropout(weights, dropout_p) if dropout_p > 0.0 else weights
    return _unchunk((weights @ values).reshape(B * n, H, window, D), B, T)


def _chunks(x: torch.Tensor, window: int, n: int) -> torch.Tensor:
    """(B, H, T, D) -> (B * n, H, window, D): chunk j of every row is batch entry b * n + j. The end
    is padded with zeros up to n * window: padded keys come after every real query, so no real
    query sees them, and padded queries are cut off again by _unchunk."""
    B, H, T, D = x.shape
    if T != n * window:
        x = F.pad(x, (0, 0, 0, n * window - T))
    return x.view(B, H, n, window, D).transpose(1, 2).reshape(B * n, H, window, D)


def _unchunk(x: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """The inverse of _chunks: (B * n, H, window, D) -> (B, H, T, D)."""
    _, H, window, D = x.shape
    return x.view(B, -1, H, window, D).transpose(1, 2).reshape(B, H, -1, D)[:, :, :T]


def _previous_reversed(chunks: torch.Tensor, B: int) -> torch.Tensor:
    """Each chunk's previous chunk, reversed in time, without its last (then useless) position;
    zeros before the first chunk: (B * n, H, w, D) -> (B * n, H, w - 1, D)."""
    _, H, window, D = chunks.shape
    by_row = chunks.view(B, -1, H, window, D)
    previous = torch.zeros_like(by_row)
    previous[:, 1:] = by_row[:, :-1].flip(3)
    return previous.view(-1, H, window, D)[:, :, : window - 1]


class _BandedCPU(torch.autograd.Function):
    """The band as two causal calls of PyTorch's fused CPU attention kernel, merged by log-sum-exp.

    In chunk coordinates (query r, key s of a chunk of w): piece 1 is the own chunk, s <= r.
    Piece 2 is the previous chunk, s > r; flipping both (r' = w-1-r, s' = w-1-s) makes it s' < r',
    i.e. queries r' = 1 .. w-1 against keys s' = 0 .. w-2, causally. Query r = w-1 has no piece 2.
    The first chunk's piece 2 has zero keys and -inf log-sum-exp: it adds nothing, and its
    gradients (all multiplied by a zero key, or landing on padding) vanish.
    """

    @staticmethod
    def forward(ctx, q, k, v, window: int, scale: float | None):
        B, _, T, _ = q.shape
        n = -(-T // window)
        qc, kc, vc = (_chunks(x, window, n) for x in (q, k, v))
        own, own_lse = _FLASH(qc, kc, vc, 0.0, True, scale=scale)
        prev, prev_lse = _FLASH(qc.flip(2)[:, :, 1:], _previous_reversed(kc, B), _previous_reversed(vc, B),
                                0.0, True, scale=scale)
        prev_lse.view(B, n, *prev_lse.shape[1:])[:, 0] = float("-inf")  # no chunk before the first
        prev, prev_lse = prev.flip(2), prev_lse.flip(2)  # back to rows r = 0 .. w-2
        lse = own_lse.clone()
        lse[:, :, :-1] = torch.logaddexp(own_lse[:, :, :-1], prev_lse)
        out = own * (own_lse - lse).exp().unsqueeze(-1)
        out[:, :, :-1] += prev * (prev_lse - lse[:, :, :-1]).exp().unsqueeze(-1)
        ctx.save_for_backward(qc, kc, vc, out, lse)
        ctx.window, ctx.scale, ctx.B, ctx.T = window, scale, B, T
        return _unchunk(out, B, T)

    @staticmethod
    def backward(ctx, grad):
        qc, kc, vc, out, lse = ctx.saved_tensors
        window, scale, B, T = ctx.window, ctx.scale, ctx.B, ctx.T
        gc = _chunks(grad.contiguous(), window, qc.size(0) // B)
        dq, dk, dv = _FLASH_BACKWARD(gc, qc, kc, vc, out, lse, 0.0, True, scale=scale)
        flipped = (x.flip(2)[:, :, 1:] for x in (gc, qc, out, lse.unsqueeze(-1)))
        g_f, q_f, out_f, lse_f = flipped
        dq_p, dk_p, dv_p = _FLASH_BACKWARD(g_f, q_f, _previous_reversed(kc, B), _previous_reversed(vc, B),
                                           out_f, lse_f.squeeze(-1), 0.0, True, scale=scale)
        dq[:, :, :-1] += dq_p.flip(2)
        _, H, _, D = dk.shape
        for total, part in ((dk, dk_p), (dv, dv_p)):  # piece 2's keys were the previous chunk's 1 .. w-1
            total.view(B, -1, H, window, D)[:, :-1, :, 1:] += part.view(B, -1, H, window - 1, D)[:, 1:].flip(3)
        return _unchunk(dq, B, T), _unchunk(dk, B, T), _unchunk(dv, B, T), None, None


@functools.cache
def _has_flex() -> bool:
    """FlexAttention compiles to Triton kernels: it needs both."""
    try:
        import triton  # noqa: F401
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=8)
def _flex_band_mask(T: int, window: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def in_band(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return create_block_mask(in_band, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


def _flex_banded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float | None,
                 compiled: bool = True) -> torch.Tensor:
    """FlexAttention with a block mask of the band (blocks wholly outside it are skipped)."""
    from torch.nn.attention.flex_attention import flex_attention
    attend = _compiled_flex() if compiled else flex_attention
    return attend(q, k, v, block_mask=_flex_band_mask(q.size(2), window, str(q.device)), scale=scale)
