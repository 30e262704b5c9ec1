"""What generation needs besides the model and its KV cache (cache.py): checking a request,
choosing the next token, and the CPU's fast decoding kernels.

GPT.generate_stream (model.py) runs the loop: the prompt through the model once, filling a
KVCache, then one token at a time, each chosen by choose_next from the last position's logits.
On the CPU the loop runs inside decoding(), which lays the weights out for matrix-vector products
(kernels/linear.py).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch
import torch.nn as nn

from mingpt.nn import kernels


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
