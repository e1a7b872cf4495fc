"""Decoded images of different sizes in one flat uint8 buffer: a folder of photos decoded once with
their own aspect ratios, or one streamed batch of them.

:class:`RaggedImages` stands where a uint8 ``[N, 3, S, S]`` tensor would (a length, a shape at the
evaluation size ``S``, subsets, ``to``/``pin_memory``); training crops are cut from the kept
images by :func:`simclrv2.data.gpu_augment.resized_crop` with per-image boxes, and evaluation
reads :meth:`RaggedImages.eval_views`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from simclrv2.data.files import eval_crop


class RaggedImages:
    """``N`` RGB uint8 images, image ``i`` of size ``sizes[i] = (h, w)`` stored at ``offsets[i]``
    of ``data`` as ``[3, h, w]``; ``size`` is the evaluation side."""

    def __init__(self, data: Tensor, sizes: Tensor, size: int, offsets: Tensor | None = None) -> None:
        self.data = data
        self.sizes = sizes.long().cpu().reshape(-1, 2)
        numel = 3 * self.sizes[:, 0] * self.sizes[:, 1]
        self.offsets = (numel.cumsum(0) - numel) if offsets is None else offsets.long().cpu()
        self.size = size

    @classmethod
    def stack(cls, images: Sequence[Tensor], size: int, release: bool = False, chunk: int = 256) -> "RaggedImages":
        """From a list of uint8 ``[3, h, w]`` tensors (copied into one buffer). ``release``: each list
        entry is set to None once copied, so a list holding the only references is freed as the
        buffer fills (peak memory about one copy of the images, not two)."""
        sizes = torch.tensor([list(im.shape[-2:]) for im in images], dtype=torch.long).reshape(-1, 2)
        if not release:
            data = torch.cat([im.reshape(-1) for im in images]) if images else torch.empty(0, dtype=torch.uint8)
            return cls(data, sizes, size)
        out = cls(torch.empty(int((3 * sizes[:, 0] * sizes[:, 1]).sum()), dtype=torch.uint8,
                              device=images[0].device if images else "cpu"), sizes, size)
        ends = (out.offsets + 3 * sizes[:, 0] * sizes[:, 1]).tolist()
        starts = out.offsets.tolist()
        for a in range(0, len(images), chunk):  # one copy per chunk: per-image copies cost a parallel region each
            b = min(a + chunk, len(images))
            torch.cat([im.reshape(-1) for im in images[a:b]], out=out.data[starts[a]:ends[b - 1]])
            images[a:b] = [None] * (b - a)  # type: ignore[list-item]
        return out

    def __len__(self) -> int:
        return self.sizes.shape[0]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.size, self.size)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    @property
    def device(self) -> torch.device:
        return self.data.device

    def image(self, i: int) -> Tensor:
        """Image ``i`` as ``[3, h, w]`` (a view)."""
        h, w = self.sizes[i].tolist()
        start = int(self.offsets[i])
        return self.data[start:start + 3 * h * w].view(3, h, w)

    def take(self, index: Tensor | Sequence[int]) -> "RaggedImages":
        """The images ``index``, copied into a new buffer."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1).tolist()
        return RaggedImages.stack([self.image(i) for i in index], self.size)

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]):
        if isinstance(index, int):
            return self.image(index)
        if isinstance(index, slice):
            index = range(len(self))[index]
        return self.take(list(index) if isinstance(index, range) else index)

    def concat(self, other: "RaggedImages") -> "RaggedImages":
        return RaggedImages(torch.cat([self.data, other.data.to(self.device)]), torch.cat([self.sizes, other.sizes]),
                            self.size)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "RaggedImages":
        return RaggedImages(self.data.to(device, non_blocking=non_blocking), self.sizes, self.size, self.offsets)

    def pin_memory(self) -> "RaggedImages":
        return RaggedImages(self.data.pin_memory(), self.sizes, self.size, self.offsets)

    def eval_views(self, start: int = 0, stop: int | None = None) -> Tensor:
        """float32 ``[B, 3, size, size]``: the evaluation views (:func:`eval_crop`, the official
        ``preprocess_for_eval``) of images ``start:stop``, computed where the images are."""
        stop = len(self) if stop is None else min(stop, len(self))
        out = torch.empty(max(0, stop - start), 3, self.size, self.size, device=self.device)
        for k, i in enumerate(range(start, stop)):
            out[k] = eval_crop(self.image(i), self.size)
        return out

    def __repr__(self) -> str:
        return f"RaggedImages({len(self)} images, {self.nbytes / 2 ** 20:.1f} MiB, size={self.size})"
