"""SimCLRv2's optional memory buffer, as MoCo: a moving-average ("momentum") network produces the keys
every query is contrasted with, those of the current batch and, from a queue, those of past batches.

The rule is the authors' (google-research/simclr issue #115: "the contrasting examples are from
momentum encoder from current and past batches, which is consistent with MoCo"); their memory code
was never released. Queries (the anchors, which carry the gradient) come from the online network.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

from simclrv2.losses import nt_xent

log = logging.getLogger(__name__)


def capped_size(requested: int, images: int, batch: int, keys_per_image: int = 2) -> int:
    """The buffer size to use: at most the keys of ``images - batch`` images.

    A step enqueues ``keys_per_image`` keys per image of its batch (both views). A buffer holding more
    than the training set minus one batch spans more than an epoch, so it holds keys of the very
    images being contrasted, as their own negatives; it is capped there, with a warning.
    """
    cap = keys_per_image * max(images - batch, 0)
    if requested <= cap:
        return requested
    log.warning("pretrain.memory_size=%d is more than the %d keys of the training set minus one batch "
                "(%d - %d images, %d keys each): capped at %d%s", requested, cap, images, batch,
                keys_per_image, cap, " (memory buffer off)" if cap == 0 else "")
    return cap


class MemoryQueue(nn.Module):
    """A FIFO of the ``size`` most recent keys; ``negatives()`` are the filled rows, without gradient."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def negatives(self) -> Tensor:
        return self.keys[: int(self.filled)].detach()

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` after the newest entry, wrapping around and overwriting the oldest."""
        keys = keys.detach().to(self.keys.dtype)[-self.size:]
        n, ptr = keys.shape[0], int(self.ptr)
        first = min(n, self.size - ptr)
        self.keys[ptr:ptr + first] = keys[:first]
        self.keys[: n - first] = keys[first:]
        self.ptr.fill_((ptr + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))

    def ordered(self) -> Tensor:
        """The stored keys from oldest to newest (for inspection and tests)."""
        if int(self.filled) < self.size:
            return self.keys[: int(self.filled)]
        return torch.roll(self.keys, -int(self.ptr), dims=0)


class MovingAverage(nn.Module):
    """An exponential moving average of a network's parameters (buffers copied), never trained."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.net = copy.deepcopy(net)
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        for ema, p in zip(self.net.parameters(), net.parameters()):
            ema.lerp_(p.detach(), 1 - self.decay)
        for ema, b in zip(self.net.buffers(), net.buffers()):
            ema.copy_(b)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def momentum_contrast(z_a: Tensor, z_b: Tensor, keys_a: Tensor, keys_b: Tensor, temperature: float,
                      offset: int = 0, queue: Tensor | None = None) -> Tensor:
    """NT-Xent with the memory buffer: the n local queries ``z_a``/``z_b`` (two views of each image, from
    the online network) against keys from the moving-average network only.

    ``keys_a``/``keys_b``: the moving-average network's embeddings of the same views of the global
    batch (rows ``offset .. offset+n`` are this device's images); ``queue``: its keys of past batches.
    Query ``z_a[i]`` has key ``keys_b[i]`` as its positive; its negatives are the keys of every other
    image of the batch (both views) and the queue. The key of its own view, ``keys_a[i]``, is left out,
    as SimCLR leaves out a view's similarity with itself. Keys carry no gradient. Both directions
    summed, averaged over the images, as :func:`simclrv2.losses.nt_xent`.
    """
    return nt_xent(z_a, z_b, temperature, all_a=keys_a.detach(), all_b=keys_b.detach(), offset=offset, queue=queue)
