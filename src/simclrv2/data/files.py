"""Images that stay on disk: large folders are read and decoded batch by batch instead of once.

:class:`FileImages` stands where a decoded uint8 tensor ``[N, 3, S, S]`` would: it has a length,
a shape and lazy subsets, and indexing it decodes. Training reads it through
:class:`simclrv2.data.feed.BatchFeed`, whose DataLoader workers only read and decode.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from simclrv2.data.errors import DataError

log = logging.getLogger(__name__)

JPEG_EXTENSIONS = (".jpg", ".jpeg")
_warned: set[str] = set()  # unreadable files already reported by this process


class UnreadableImage(DataError):
    """An image file could not be decoded (raised only in strict mode)."""


def fit_square(image: Tensor, size: int) -> Tensor:
    """Resize uint8 ``[3, H, W]`` so its short side is ``size`` (antialiased bilinear), then centre-crop."""
    from torchvision.transforms.v2 import functional as TF

    h, w = image.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        image = TF.resize(image, [max(size, round(h * scale)), max(size, round(w * scale))], antialias=True)
        h, w = image.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        image = image[..., top:top + size, left:left + size]
    return image.contiguous()


def _decode_pil(path: str) -> Tensor | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    except (OSError, ValueError, SyntaxError):
        return None


def decode_file(path: str | Path, size: int) -> Tensor | None:
    """One file as RGB uint8 ``[3, size, size]`` (short side resized, centre-cropped); None if unreadable.

    torchvision.io decodes; PIL takes the formats it lacks (BMP, TIFF, PPM, ...).
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    path = str(path)
    try:
        image = decode_image(read_file(path), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError, OSError):
        image = _decode_pil(path)
    return None if image is None else fit_square(image, size)


class FileImages:
    """``N`` image files presented as uint8 ``[N, 3, size, size]``, decoded when read.

    ``cache_size`` is the size batches for training are decoded to (random crops are then taken on the
    device); ``size`` is what indexing returns, for evaluation. An unreadable file is an error in
    ``strict`` mode; otherwise it is logged and replaced by the next readable file, so a batch keeps
    its length.
    """

    def __init__(self, files: Sequence[str | Path], size: int, cache_size: int | None = None,
                 strict: bool = False, workers: int = 4) -> None:
        self.files = [str(f) for f in files]
        self.size = size
        self.cache_size = cache_size or size
        self.strict = strict
        self.workers = workers

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), 3, self.size, self.size)

    @property
    def nbytes(self) -> int:
        """What the images would take decoded in memory at ``size``."""
        return len(self.files) * 3 * self.size * self.size

    def take(self, index: Tensor | Sequence[int]) -> "FileImages":
        """The lazy subset ``index`` (no decoding)."""
        index = torch.as_tensor(index, dtype=torch.long).tolist()
        return self._like([self.files[i] for i in index])

    def concat(self, other: "FileImages") -> "FileImages":
        return self._like(self.files + other.files)

    def _like(self, files: list[str]) -> "FileImages":
        return FileImages(files, self.size, self.cache_size, self.strict, self.workers)

    def load(self, i: int, size: int | None = None) -> Tensor:
        """Image ``i`` decoded at ``size`` (default ``self.size``); unreadable files as the class says."""
        size = size or self.size
        for step in range(len(self.files)):
            j = (i + step) % len(self.files)
            image = decode_file(self.files[j], size)
            if image is not None:
                if step and self.files[i] not in _warned:
                    _warned.add(self.files[i])
                    log.warning("unreadable image %s: used %s in its place", self.files[i], self.files[j])
                return image
            if self.strict:
                raise UnreadableImage(f"unreadable image: {self.files[j]}")
        raise UnreadableImage(f"none of the {len(self.files)} images (e.g. {self.files[0]}) could be read")

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> Tensor:
        """Decode ``index`` at ``size`` (threads); an int gives ``[3, S, S]``, anything else ``[B, 3, S, S]``."""
        if isinstance(index, int):
            return self.load(index)
        if isinstance(index, slice):
            rows = list(range(len(self.files)))[index]
        else:
            rows = torch.as_tensor(index, dtype=torch.long).reshape(-1).tolist()
        out = torch.empty(len(rows), 3, self.size, self.size, dtype=torch.uint8)
        if not rows:
            return out

        def work(k: int) -> None:
            out[k] = self.load(rows[k])

        with ThreadPoolExecutor(max(1, min(self.workers, os.cpu_count() or 1) * 2)) as pool:
            list(pool.map(work, range(len(rows))))
        return out

    def __repr__(self) -> str:
        return f"FileImages({len(self.files)} files, size={self.size}, cache_size={self.cache_size})"
