"""The validation loss: a model's mean loss on held-out data, as the Trainer logs it.

A dataset that has eval_batches(batch_size, max_batches) (a TokenStream) gives the same fixed
windows every time, so successive evaluations compare; any other Dataset of (x, y) pairs is read
in order. Under torchrun the ranks may share the batches out and add up their sums.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from itertools import islice
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from mingpt import distributed
from mingpt.distributed import Place


@torch.no_grad()
def val_loss(model: nn.Module, dataset: Dataset, batch_size: int, max_batches: int | None,
             device: torch.device, autocast: Callable[[], AbstractContextManager],
             place: Place = Place(), share: bool = False) -> float:
    """Mean loss of model (forward(x, y) -> (logits, loss)) over fixed batches of dataset.

    With share, the ranks share the batches out (rank r takes every world_size-th) and add up
    their sums; without it (one process, or a sharded model whose every forward all ranks must
    join) every rank evaluates them all."""
    if hasattr(dataset, "eval_batches"):
        batches = dataset.eval_batches(batch_size, max_batches)
    else:
        batches = islice(DataLoader(dataset, batch_size=batch_size, shuffle=False), max_batches)
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for i, (x, y) in enumerate(batches):
        if share and i % place.world_size != place.rank:
            continue
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        total += loss.float() * len(x)
        count += len(x)
    model.train(was_training)
    sums = torch.stack([total, torch.tensor(float(count), device=device)])
    if share:
        distributed.total(sums)  # every rank's share
    return (sums[0] / sums[1].clamp(min=1)).item()
