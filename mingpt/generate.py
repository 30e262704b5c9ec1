"""What generation needs besides the model: a KV cache, choosing the next token, fast decoding.

GPT.generate_stream (model.py) runs the loop: the prompt through the model once, filling a
KVCache, then one token at a time, each chosen by choose_next from the last position's logits.
On the CPU the loop runs inside decoding(), which lays the weights out for matrix-vector products
(kernels/linear.py).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, Sequence

import torch
import torch.nn as nn

from mingpt import kernels


class KVCache:
    """Keys and values of the positions seen so far, for every layer.

    During generation each new token only needs its own query against all past keys, so we keep
    the keys/values instead of recomputing them: one step costs O(T) instead of O(T^2).
    A local layer (windows[layer] = w) only ever looks at its last w positions, so it keeps those
    in a ring of w slots, position p in slot p % w: its memory stops growing past the window. The
    order of the slots does not matter, since a query weighs the keys it sees without regard to
    their order (positions were added to the tokens before the first layer).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype, windows: Sequence[int | None] | None = None) -> None:
        self.windows = [min(w, max_len) if w else None for w in (windows or [None] * n_layer)]
        shapes = [(batch_size, n_head, w or max_len, head_dim) for w in self.windows]
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.length = 0  # positions filled so far (advanced once per forward, after all layers)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new k, v (B, n_head, T, head_dim) and return the keys and values the new
        queries attend over: all positions so far, or for a ring the new ones (a prompt, T > 1,
        which must come first) or the window's (one new token)."""
        keys, values, window = self.keys[layer], self.values[layer], self.windows[layer]
        T = k.size(2)
        if window is None:
            keys.narrow(2, self.length, T).copy_(k)
            values.narrow(2, self.length, T).copy_(v)
            end = self.length + T
            return keys.narrow(2, 0, end), values.narrow(2, 0, end)
        if T == 1:
            slot = self.length % window
            keys.narrow(2, slot, 1).copy_(k)
            values.narrow(2, slot, 1).copy_(v)
            filled = min(self.length + 1, window)
            return keys.narrow(2, 0, filled), values.narrow(2, 0, filled)
        if self.length:
            raise ValueError("a KV cache with local layers takes a prompt first, then one token at a time")
        kept = min(T, window)  # the prompt's last positions, each into its slot
        slots = torch.arange(T - kept, T, device=k.device) % window
        keys.index_copy_(2, slots, k[:, :, T - kept:])
        values.index_copy_(2, slots, v[:, :, T - kept:])
        return k, v

    def nbytes(self) -> int:
        """The memory the cache holds, in bytes."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


def check_request(idx: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse impossible generation settings with a message that names the fix."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 (or None for no limit)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (or None for no limit)")
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be a non-empty (batch, time) tensor, got shape {tuple(idx.shape)}")


def choose_next(logits: torch.Tensor, temperature: float = 1.0, do_sample: bool = False,
                top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Pick the next token (B, 1) from the last position's logits (B, vocab): the most likely one,
    or with do_sample a draw from the softmax at `temperature`, restricted to the top_k most
    likely tokens and/or the smallest set whose probability reaches top_p."""
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(filtered_logits(logits, temperature, top_k, top_p).softmax(dim=-1), num_samples=1)


def filtered_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """The logits (B, vocab) a draw is made from: divided by temperature (> 0), with -inf for
    the tokens outside the top_k most likely and outside the smallest set reaching top_p.
    Every shape is fixed by the vocabulary, so a compiled decoding step can do this too."""
    logits = logits / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the ones ranked above it already reach top_p (keeps at least one)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)  # back to vocab order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def decoding(model: nn.Module, steps: int) -> ContextManager:
    """The context to decode `steps` tokens in with a KV cache: on the CPU the fast kernels of
    kernels.decoding; elsewhere nothing."""
    on_cpu = next(model.parameters()).is_cpu
    return kernels.decoding(model, steps) if on_cpu else nullcontext()
