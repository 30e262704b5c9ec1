"""Static-shape decoding: a one-token step whose shapes never change, so that it compiles once
(torch.compile, fullgraph, dynamic=False) and on CUDA replays as one CUDA graph.

generate's usual loop (model.py) grows its KV cache by one position per token, so every step has
new shapes and Python launches each of its ~90 kernels (a GPU then waits for the host). Here the
cache is a StaticKVCache (nn/cache.py), allocated once at its full length, and every step has the
same shapes and reads the same memory. Both go through the model's one forward:
    prefill  model.hidden_states(prompt, cache): the prompt into the empty cache, slots 0 .. T-1
    step     model.hidden_states(the token at position p, cache): its k, v into slot p, attention
             over every slot through the cache's mask of p; the next token is written into
             tokens[:, p + 1]
The step takes no arguments: its inputs (the token, the position, the sampling noise) live in
buffers of fixed address, which is what a CUDA graph replays over. Sampling draws without a host
sync by the exponential race: argmax(probs / E) with E ~ Exp(1) per token is a draw from probs,
and E is written into its buffer by one in-place kernel before each step.
GPT.generate(..., static=True) decodes this way; `wanted` is the rule for the default.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

from mingpt.nn.cache import StaticKVCache
from mingpt.nn.generate import decoding, filtered_logits

logger = logging.getLogger(__name__)

# compile modes by device when static=True: CUDA replays the step as a CUDA graph; on the CPU the
# eager step is the default (benchmarks/decode.py measures all three)
DEFAULT_MODE = {"cuda": "reduce-overhead", "cpu": "eager"}
MODES = ("eager", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# From how many new tokens generate(static=None) decodes statically on CUDA: the compile cost
# divided by the time each token saves. None until benchmarks/gpu_check.py has measured it on a
# GPU ("pays from"), so until then the default stays the usual loop everywhere.
CUDA_MIN_NEW_TOKENS: int | None = None
CACHE_ROUNDING = 256  # the cache length is rounded up to a multiple of this: fewer distinct shapes


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (do_sample False or temperature 0), or a draw from the
    softmax at temperature restricted to top_k / top_p (as generate.choose_next)."""
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


def wanted(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, use_cache: bool,
           static: bool | str | None) -> bool:
    """Whether generate decodes statically: as asked (True or a compile mode; False: never), and
    for static=None on CUDA only, from CUDA_MIN_NEW_TOKENS new tokens on, in eval mode, when the
    whole generation fits in block_size (the usual loop slides the context past it)."""
    if static is not None:
        return static is not False and use_cache
    device = next(model.parameters()).device
    return (device.type == "cuda" and CUDA_MIN_NEW_TOKENS is not None and max_new_tokens >= CUDA_MIN_NEW_TOKENS
            and use_cache and not model.training and idx.size(1) + max_new_tokens - 1 <= model.block_size)


def cache_length(model: nn.Module, prompt_length: int, max_new_tokens: int) -> int:
    """The positions a static cache needs (prompt + new tokens - 1: the last token is never fed
    back), rounded up to a multiple of CACHE_ROUNDING, at most block_size."""
    needed = prompt_length + max_new_tokens - 1
    return min(model.block_size, -(-needed // CACHE_ROUNDING) * CACHE_ROUNDING)


class StaticDecoder:
    """A model's static cache and its compiled one-token step, for one batch size and cache length.

    prefill(prompt) runs the prompt through the model and chooses the first new token; each
    step() then feeds the last chosen token and chooses the next, all on the device.
    """

    def __init__(self, model: nn.Module, batch_size: int, max_len: int, sampling: Sampling = Sampling(),
                 mode: str = "eager") -> None:
        if mode not in MODES:
            raise ValueError(f"static decoding mode {mode!r} is not one of {', '.join(MODES)}")
        if not 1 <= max_len <= model.block_size:
            raise ValueError(f"a static cache of {max_len} positions must hold 1 to block_size={model.block_size}")
        c, p = model.config, next(model.parameters())
        self.model, self.batch_size, self.max_len, self.sampling, self.mode = model, batch_size, max_len, sampling, mode
        self.key = (batch_size, max_len, sampling, mode, p.device, p.dtype)
        windows = [block.attn.attend.window for block in model.transformer.h]  # (local layers: masks)
        self.cache = StaticKVCache(c.n_layer, batch_size, c.n_kv_head, max_len, c.n_embd // c.n_head, p.device,
                                   p.dtype, windows)
        self.tokens = torch.zeros(batch_size, max_len + 1, dtype=torch.long, device=p.device)  # fed and chosen
        self.noise = torch.ones(batch_size, c.vocab_size, device=p.device)  # Exp(1) per token, for sampling
        if mode != "eager":  # the same memory at every call: what a CUDA graph replays over
            for buffer in (*self.cache.buffers(), self.tokens, self.noise):
                torch._dynamo.mark_static_address(buffer)
        self.position = 0  # the host's copy of cache.position, kept without reading the device
        self._step = self._decode_one if mode == "eager" else \
            torch.compile(self._decode_one, mode=None if mode == "default" else mode, fullgraph=True, dynamic=False)

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor, max_new_tokens: int) -> None:
        """Fill the cache with the prompt (B, T) and choose the first new token."""
        B, T = prompt.shape
        if B != self.batch_size:
            raise ValueError(f"this static decoder holds batch {self.batch_size}, got a prompt of batch {B}")
        if T + max_new_tokens - 1 > self.max_len:
            raise ValueError(f"a prompt of {T} tokens and {max_new_tokens} new ones need {T + max_new_tokens - 1} "
                             f"cache positions, but the static cache holds {self.max_len} (block_size="
                             f"{self.model.block_size}); shorten the prompt or max_new_tokens, or pass "
                             f"static=False (which slides the context past block_size)")
        model = self.model
        self.cache.reset()
        h = model.hidden_states(prompt, self.cache)  # the cache now holds slots 0 .. T-1
        logits = model.cap(model.lm_head(h[:, -1, :]))
        self.tokens[:, :T] = prompt
        self._draw_noise()
        self.tokens[:, T:T + 1] = self._choose(logits)
        self.position = T

    @torch.no_grad()
    def step(self) -> None:
        """Feed the last chosen token and choose the next one (tokens[:, position + 1])."""
        if self.position >= self.max_len:
            raise ValueError(f"the static cache of {self.max_len} positions is full")
        self._draw_noise()
        self._step()
        self.position += 1

    def _draw_noise(self) -> None:
        """Fresh Exp(1) noise for a draw: outside the graph, one in-place kernel from torch's
        seeded generator (torch.manual_seed makes a generation reproducible), no host sync."""
        if not self.sampling.greedy:
            self.noise.exponential_()

    def __reduce__(self):
        """A copy or pickle of the model keeps no decoder (its cache and compiled step are local to
        this process): the copy builds its own when it first decodes statically."""
        return _no_decoder, ()

    def chosen(self, start: int, end: int) -> torch.Tensor:
        """The tokens at positions start .. end - 1, (B, end - start): a view of the buffer, which
        the next prefill overwrites (clone it to keep it)."""
        return self.tokens[:, start:end]

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token (B, 1) from logits (B, vocab), without leaving the device."""
        s = self.sampling
        if s.greedy:
            return logits.argmax(dim=-1, keepdim=True)
        probs = filtered_logits(logits, s.temperature, s.top_k, s.top_p).softmax(dim=-1)
        # exponential race: P(argmax_i probs_i / E_i = j) = probs_j; a token outside top-k/top-p
        # has probability 0 and never wins (the clamp keeps 0 / 0 away)
        return (probs / self.noise.clamp_min(1e-20)).argmax(dim=-1, keepdim=True)

    def _decode_one(self) -> None:
        """One token through the model with every shape fixed: the step that compiles."""
        model, cache = self.model, self.cache
        h = model.hidden_states(self.tokens.index_select(1, cache.position), cache)  # advances the position
        logits = model.cap(model.lm_head(h[:, -1, :]))
        self.tokens.index_copy_(1, cache.position, self._choose(logits))  # at p + 1


def _no_decoder() -> None:
    return None


def forget(model: nn.Module) -> None:
    """Free the static decoder (its cache: n_layer x 2 x B x n_kv_head x max_len x head_dim) that
    a model keeps after generate(..., static=...) so that the next call with the same settings
    reuses it."""
    model.__dict__.pop("_static_decoder", None)


def decoder_for(model: nn.Module, batch_size: int, max_len: int, sampling: Sampling, mode: str) -> StaticDecoder:
    """The model's static decoder for these settings: the one kept from the last call when they
    match (its compiled step and cache are reused), else a new one, which replaces it."""
    p = next(model.parameters())
    kept = model.__dict__.get("_static_decoder")
    if kept is not None and kept.key == (batch_size, max_len, sampling, mode, p.device, p.dtype):
        return kept
    model.__dict__["_static_decoder"] = None  # let the old cache go before the new one is allocated
    decoder = StaticDecoder(model, batch_size, max_len, sampling, mode)
    model.__dict__["_static_decoder"] = decoder
    return decoder


def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, sampling: Sampling,
             static: bool | str = True) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens tokens (B, 1) continuing idx (B, T), decoded with the static step.
    static: True for the device's default mode (DEFAULT_MODE), or a mode of MODES."""
    if model.training:
        raise ValueError("static decoding runs without dropout: call model.eval() first (or pass static=False)")
    device = next(model.parameters()).device
    mode = DEFAULT_MODE.get(device.type, "default") if static is True else static
    B, T = idx.shape
    if T + max_new_tokens - 1 > model.block_size:
        raise ValueError(f"a prompt of {T} tokens and {max_new_tokens} new ones need {T + max_new_tokens - 1} "
                         f"cache positions, but static decoding holds at most block_size={model.block_size}; "
                         f"shorten the prompt or max_new_tokens, or pass static=False (which slides the context)")
    decoder = decoder_for(model, B, cache_length(model, T, max_new_tokens), sampling, mode)
    with decoding(model, max_new_tokens):
        decoder.prefill(idx, max_new_tokens)
        yield decoder.chosen(T, T + 1)
        for i in range(1, max_new_tokens):
            decoder.step()
            yield decoder.chosen(T + i, T + i + 1)
