"""Index batches of an epoch: which images each optimizer step sees."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool) -> list[Tensor]:
    """A shuffled epoch of index batches.

    ``drop_last`` keeps only full batches (contrastive loss); otherwise the permutation is split into
    near-equal batches so no batch is a single image (BatchNorm needs two).
    """
    perm = torch.randperm(n, generator=generator)
    batch_size = min(batch_size, n)
    if drop_last:
        steps = n // batch_size
        return list(perm[: steps * batch_size].view(steps, batch_size))
    return list(torch.tensor_split(perm, math.ceil(n / batch_size)))


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    batch_size = min(batch_size, n)
    return n // batch_size if drop_last else math.ceil(n / batch_size)
