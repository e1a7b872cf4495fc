"""NT-Xent, the normalized temperature-scaled cross entropy of SimCLR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float,
    all_a: Tensor | None = None,
    all_b: Tensor | None = None,
    offset: int = 0,
    queue: Tensor | None = None,
) -> Tensor:
    """NT-Xent of the n local images: the loss of anchor ``z_a[i]`` plus that of ``z_b[i]`` (two views of
    image i), averaged over the images.

    Each anchor's positive is the other view of its image; its negatives are every other view in
    the candidate set: ``all_a``/``all_b`` (the global batch of N >= n images, gathered from all
    devices, whose rows ``offset .. offset+n`` are this device's ``z_a``/``z_b``), plus the rows of
    ``queue`` (a memory buffer of extra negatives, no gradient). Embeddings are L2-normalized here.

    The two directions are summed, not averaged, as in the official objective
    (google-research/simclr ``tf2/objective.py``: ``reduce_mean(loss_a + loss_b)``), so the published
    learning rates apply: LARS normalizes the step of the adapted weights, but BatchNorm parameters and
    biases (excluded from LARS) step with the gradient's scale.
    """
    if z_a.shape != z_b.shape:
        raise ValueError(f"views differ in shape: {tuple(z_a.shape)} vs {tuple(z_b.shape)}")
    a = F.normalize(_upcast(z_a), dim=1)
    b = F.normalize(_upcast(z_b), dim=1)
    big_a = a if all_a is None else F.normalize(_upcast(all_a), dim=1)
    big_b = b if all_b is None else F.normalize(_upcast(all_b), dim=1)
    n = a.shape[0]
    target = torch.arange(n, device=a.device) + offset
    self_mask = F.one_hot(target, big_a.shape[0]).bool()

    logits_ab = a @ big_b.T / temperature
    logits_aa = (a @ big_a.T / temperature).masked_fill(self_mask, float("-inf"))
    logits_ba = b @ big_a.T / temperature
    logits_bb = (b @ big_b.T / temperature).masked_fill(self_mask, float("-inf"))
    parts_a, parts_b = [logits_ab, logits_aa], [logits_ba, logits_bb]
    if queue is not None and queue.shape[0] > 0:
        q = F.normalize(_upcast(queue.detach()), dim=1)
        parts_a.append(a @ q.T / temperature)
        parts_b.append(b @ q.T / temperature)
    loss_a = F.cross_entropy(torch.cat(parts_a, dim=1), target)
    loss_b = F.cross_entropy(torch.cat(parts_b, dim=1), target)
    return loss_a + loss_b


def _upcast(x: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 activations from autocast), float64 kept for exact checks."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
