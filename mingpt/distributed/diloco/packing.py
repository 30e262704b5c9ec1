"""The outer gradient on the wire, and how the workers' parts of it combine: pure functions over
tensors (the collectives that carry them are torchft_adapter.py's), so they are tested alone.

fp32 goes through torchft's own all-reduce. A packed exchange (bf16, or int8 with a 4-byte scale
per segment) of n workers cuts the flat outer gradient into n segments:
    outgoing   worker i packs its n segments; an all-to-all hands segment j to worker j
    combined   worker j unpacks the n contributions to its segment, adds them up in fp32 in rank
               order (the same sum on every worker) and packs the result again
    incoming   an all-gather hands every worker every combined segment, unpacked: the whole mean
Each packed byte crosses the wire twice, as in a ring all-reduce, so the bytes counted per worker
are 2(n-1) x one packed segment. int8 keeps error feedback at both packings: what rounding lost
one round (a residual per fragment and stage) is added before the next rounding.
"""
from __future__ import annotations

import torch


def pack(tensor: torch.Tensor, packing: str, residual: torch.Tensor | None = None) -> torch.Tensor:
    """A float32 tensor as the bytes that go on the wire (uint8): bf16, or int8 with one fp32 scale
    (absmax / 127). int8 keeps error feedback: what rounding lost this time (residual, updated in
    place) is added before the next rounding, so the errors do not build up over rounds."""
    flat = tensor.reshape(-1).float()
    if packing == "bf16":
        return flat.to(torch.bfloat16).view(torch.uint8)
    if packing != "int8":
        raise ValueError(f"unknown packing {packing!r}")
    corrected = flat + residual if residual is not None else flat
    scale = (corrected.abs().max() / 127).clamp_min(1e-30)
    q = (corrected / scale).round_().clamp_(-127, 127).to(torch.int8)
    if residual is not None:
        residual.copy_(corrected - q.float() * scale)
    return torch.cat([q.view(torch.uint8), scale.reshape(1).view(torch.uint8)])


def unpack(payload: torch.Tensor, packing: str) -> torch.Tensor:
    """The float32 values of pack's bytes (flat)."""
    if packing == "bf16":
        return payload.view(torch.bfloat16).float()
    # (the scale's 4 bytes copied first: a segment of any length leaves them at any offset)
    q, scale = payload[:-4].view(torch.int8), payload[-4:].clone().view(torch.float32)
    return q.float() * scale


def combine(contributions: list[torch.Tensor], average: bool) -> torch.Tensor:
    """The workers' contributions to one segment (float32, in rank order) added up, or averaged:
    in a fixed order, so that every worker computes the same bits."""
    total = torch.zeros_like(contributions[0])
    for contribution in contributions:
        total += contribution
    return total / len(contributions) if average else total


class PackedExchange:
    """One worker's side of packed exchanges (bf16, int8): the packing of what it sends and the
    combination of what it receives, with int8's residuals kept from round to round."""

    def __init__(self, packing: str) -> None:
        if packing not in ("bf16", "int8"):
            raise ValueError(f"a packed exchange packs 'bf16' or 'int8', not {packing!r}")
        self.packing = packing
        self.residuals: dict[tuple, torch.Tensor] = {}  # int8's error feedback, per (stage, fragment, size)

    def outgoing(self, flat: torch.Tensor, n: int, fragment: int) -> list[torch.Tensor]:
        """flat (float32) padded to n equal segments, each packed: the j-th goes to worker j."""
        segment = -(-flat.numel() // n)
        padded = torch.zeros(segment * n)
        padded[:flat.numel()] = flat
        residual = self._residual(("sent", fragment, padded.numel()))
        return [pack(padded[j * segment:(j + 1) * segment], self.packing,
                     None if residual is None else residual[j * segment:(j + 1) * segment]) for j in range(n)]

    def combined(self, received: list[torch.Tensor], fragment: int, average: bool) -> torch.Tensor:
        """The packed combination of the n workers' packed contributions to this worker's segment."""
        mine = combine([unpack(part, self.packing) for part in received], average)
        return pack(mine, self.packing, self._residual(("summed", fragment, mine.numel())))

    def incoming(self, gathered: list[torch.Tensor], numel: int) -> torch.Tensor:
        """Every worker's combined segment, unpacked and joined: the whole result (its first numel)."""
        return torch.cat([unpack(part, self.packing) for part in gathered])[:numel]

    def _residual(self, key: tuple) -> torch.Tensor | None:
        if self.packing != "int8":
            return None
        return self.residuals.setdefault(key, torch.zeros(key[-1]))
