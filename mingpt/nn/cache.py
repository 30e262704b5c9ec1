"""What attention remembers while decoding: the keys and values of the positions seen so far.

During generation each new token only needs its own query against all past keys, so we keep the
keys and values instead of recomputing them: one step costs O(T) instead of O(T^2). The model has
one forward for training and for decoding; a cache changes what its attention sees, not the code:

    positions = cache.positions(T, device)     the new tokens' positions, a (T,) tensor
    keys, values, mask = cache.update(layer, k, v)   for each layer: store k, v; what to attend over
    cache.advance(T)                           after the last layer

mask None means the attention's own rule (causal for a prompt, everything for one new token);
a bool mask (T, keys) says which keys each query sees. Two caches:
    KVCache        grows by the tokens fed; a local layer keeps a ring of its window (generate's loop)
    StaticKVCache  every layer at full length and the position a tensor, so that a one-token step
                   has the same shapes every time and compiles once (decode.py)
"""
from __future__ import annotations

from typing import Sequence

import torch


def layer_windows(windows: Sequence[int | None] | None, n_layer: int, max_len: int) -> list[int | None]:
    """Each layer's window (None: global) as a cache of max_len positions sees it: at most max_len."""
    return [min(w, max_len) if w else None for w in (windows or [None] * n_layer)]


class KVCache:
    """Keys and values of every layer, growing as tokens are fed.

    A local layer (windows[layer] = w) only ever looks at its last w positions, so it keeps those
    in a ring of w slots, position p in slot p % w: its memory stops growing past the window. The
    order of the slots does not matter, since a query weighs the keys it sees without regard to
    their order (positions were given to the queries and keys before they were stored).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype, windows: Sequence[int | None] | None = None) -> None:
        self.max_len = max_len
        self.windows = layer_windows(windows, n_layer, max_len)
        shapes = [(batch_size, n_head, w or max_len, head_dim) for w in self.windows]
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.length = 0  # positions filled so far (advanced once per forward, after all layers)

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """The positions of T new tokens, (T,); refuses more than the cache holds."""
        if self.length + T > self.max_len:
            raise ValueError(f"sequence length {self.length + T} exceeds the cache's {self.max_len} positions "
                             f"(block_size); crop the input to the last {self.max_len} tokens")
        return torch.arange(self.length, self.length + T, device=device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store the new k, v (B, n_head, T, head_dim) and return the keys and values the new
        queries attend over, with no mask: all positions so far, or for a ring the new ones (a
        prompt, T > 1, which must come first) or the window's (one new token)."""
        keys, values, window = self.keys[layer], self.values[layer], self.windows[layer]
        T = k.size(2)
        if window is None:
            keys.narrow(2, self.length, T).copy_(k)
            values.narrow(2, self.length, T).copy_(v)
            end = self.length + T
            return keys.narrow(2, 0, end), values.narrow(2, 0, end), None
        if T == 1:
            slot = self.length % window
            keys.narrow(2, slot, 1).copy_(k)
            values.narrow(2, slot, 1).copy_(v)
            filled = min(self.length + 1, window)
            return keys.narrow(2, 0, filled), values.narrow(2, 0, filled), None
        if self.length:
            raise ValueError("a KV cache with local layers takes a prompt first, then one token at a time")
        kept = min(T, window)  # the prompt's last positions, each into its slot
        slots = torch.arange(T - kept, T, device=k.device) % window
        keys.index_copy_(2, slots, k[:, :, T - kept:])
        values.index_copy_(2, slots, v[:, :, T - kept:])
        return k, v, None

    def advance(self, T: int) -> None:
        self.length += T

    def nbytes(self) -> int:
        """The memory the cache holds, in bytes."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class StaticKVCache(KVCache):
    """Every layer at its full length max_len (local ones too: their window is a mask, not a
    ring), and the position a (1,) tensor on the device, so that feeding one token has the same
    shapes and reads the same memory every time: what a compiled step and a CUDA graph need.

    A prompt goes first into the empty cache, as into KVCache (slots 0 .. T-1, attended causally).
    Then each token at position p = `position` has its k, v written into slot p (index_copy_) and
    attends over all max_len slots through a mask built from p: slots <= p, and for a local layer
    only the window's, p - window < slot <= p. No host sync, no branch on a position. (A prompt of
    one token takes the step's way: the same numbers.) The host's count of positions is the
    decoder's to keep (decode.py): a compiled step must read no Python number that changes.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype, windows: Sequence[int | None] | None = None) -> None:
        super().__init__(n_layer, batch_size, n_head, max_len, head_dim, device, dtype)
        self.mask_windows = layer_windows(windows, n_layer, max_len)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # positions filled, on the device
        self.slots = torch.arange(max_len, device=device)
        self.masks: dict[int | None, torch.Tensor] = {}  # this step's mask of each window

    def buffers(self) -> list[torch.Tensor]:
        """The tensors a step reads and writes in place (a CUDA graph replays over their memory)."""
        return [*self.keys, *self.values, self.position]

    def reset(self) -> None:
        """Empty the cache for a new prompt (the stale slots are never seen: masks hide them)."""
        self.position.zero_()

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        if T > 1:  # a prompt, into the empty cache (reset)
            return super().positions(T, device)
        # one token: its position, and this step's masks of the keys it sees (once per window)
        self.masks = {w: self._visible(w) for w in set(self.mask_windows)}
        return self.position

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if k.size(2) > 1:
            return super().update(layer, k, v)
        keys, values = self.keys[layer], self.values[layer]  # (B, n_kv_head, max_len, head_dim)
        keys.index_copy_(2, self.position, k)
        values.index_copy_(2, self.position, v)
        return keys, values, self.masks[self.mask_windows[layer]]

    def advance(self, T: int) -> None:
        self.position.add_(T)

    def _visible(self, window: int | None) -> torch.Tensor:
        """(1, max_len) bool: the slots the query at `position` sees."""
        seen = self.slots <= self.position
        if window is not None:
            seen = seen & (self.slots > self.position - window)
        return seen.view(1, -1)
