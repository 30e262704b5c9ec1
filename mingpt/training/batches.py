"""The training batches of every rank: one global batch drawn from a generator all ranks share,
each rank taking its own rows of it. So no two ranks see the same row, 2 ranks with batch b train
on exactly the examples of 1 rank with batch 2b (or of 2 micro-batches of b), and a resumed run
draws on from the saved generator.
"""
from __future__ import annotations

import inspect
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from mingpt.distributed import Place


def draw_batches(dataset: Dataset, generator: torch.Generator, place: Place, rows_per_rank: int,
                 device: torch.device, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless training data on the device, one optimizer step at a time: this rank's
    rows_per_rank rows (batch_size x grad_accum_steps) of a global batch drawn from generator,
    rows [rank * n, (rank + 1) * n). A token stream (get_batch) cuts whole batches; a minGPT-style
    Dataset of (x, y) pairs is read through a DataLoader at the rows the generator picks."""
    n, cuda = rows_per_rank, device.type == "cuda"
    rows, size = slice(place.rank * n, (place.rank + 1) * n), n * place.world_size
    if hasattr(dataset, "get_batch"):
        # a stream that can cut only some rows (TokenStream) need not read the other ranks'
        cut_rows = place.world_size > 1 and "rows" in inspect.signature(dataset.get_batch).parameters

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            if cut_rows:
                return dataset.get_batch(size, generator, rows=rows)
            x, y = dataset.get_batch(size, generator)
            return x[rows], y[rows]

        batches: Iterator = (draw() for _ in iter(int, 1))
    else:  # minGPT's per-example datasets: a DataLoader fetches the rows the generator picks
        steps = (torch.randint(len(dataset), (size,), generator=generator)[rows].tolist()
                 for _ in iter(int, 1))
        batches = iter(DataLoader(dataset, batch_sampler=steps, num_workers=num_workers))
    for x, y in batches:
        if cuda:
            x, y = x.pin_memory(), y.pin_memory()
        yield x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)
