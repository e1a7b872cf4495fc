"""From planned index batches to uint8 image batches on the training device.

Decoded datasets are indexed where they live: on the GPU when they fit, otherwise in pinned host
memory, copied batch by batch. Image files (:class:`FileImages`) stream through DataLoader workers
that only read and decode the batches the epoch has planned, ahead of their use; the random
augmentation then runs batch-wise on the device (:mod:`simclrv2.data.gpu_augment`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from simclrv2.data.files import JPEG_EXTENSIONS, FileImages, UnreadableImage, fit_square

log = logging.getLogger(__name__)

DECODERS = ("workers", "device")


def fits_on_device(nbytes: int, device: torch.device, share: float = 0.4) -> bool:
    """Whether ``nbytes`` take at most ``share`` of the device's free memory (always false off CUDA)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


class _Reader(Dataset):
    """Worker side: image ``i`` decoded at the cache size, or only its JPEG bytes for device decoding."""

    def __init__(self, images: FileImages, size: int, bytes_only: bool) -> None:
        self.images, self.size, self.bytes_only = images, size, bytes_only

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, bytes | Tensor]:
        path = self.images.files[i]
        if self.bytes_only and path.lower().endswith(JPEG_EXTENSIONS):
            try:
                with open(path, "rb") as f:
                    return i, f.read()
            except OSError:
                pass
        return i, self.images.load(i, self.size)


def _collate(items: list[tuple[int, bytes | Tensor]]) -> tuple[Tensor, list[bytes | None], Tensor]:
    """``(index, jpeg bytes or None per image, the decoded images stacked)``: few large objects, as
    sending many small tensors between processes costs a file descriptor each."""
    index = torch.tensor([i for i, _ in items], dtype=torch.long)
    jpegs = [p if isinstance(p, bytes) else None for _, p in items]
    decoded = [p for _, p in items if isinstance(p, Tensor)]
    images = torch.stack(decoded) if decoded else torch.empty(0, dtype=torch.uint8)
    return index, jpegs, images


def _clean(error: UnreadableImage) -> UnreadableImage:
    """A worker's error re-raised by the DataLoader carries the worker's traceback; keep its message."""
    last = str(error).strip().splitlines()[-1]
    head, _, message = last.partition(": ")
    return UnreadableImage(message if head.endswith(UnreadableImage.__name__) else last)


class BatchFeed:
    """``feed(idx) -> uint8 [B, 3, S, S]`` on ``device``, for the batches announced by :meth:`plan`.

    ``decode="device"`` has the workers read JPEG bytes only and decodes each batch on the GPU
    (nvJPEG through ``torchvision.io.decode_jpeg``); other files are still decoded in the workers.
    """

    def __init__(self, images: Tensor | FileImages, device: torch.device, on_device: bool = True,
                 workers: int = 4, decode: str = "workers", prefetch: int = 4) -> None:
        if decode not in DECODERS:
            raise ValueError(f"unknown decoder {decode!r}; choose one of {', '.join(DECODERS)}")
        self.device = torch.device(device)
        self.streaming = isinstance(images, FileImages)
        if not self.streaming and self.device.type == "cuda":
            if on_device and fits_on_device(images.nbytes, self.device):
                images = images.to(self.device)
            else:
                images = images.pin_memory()
        self.images = images
        self.workers, self.decode, self.prefetch = workers, decode, prefetch
        self._batches: Iterator | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def resident(self) -> str:
        """Where the images are read from: ``files``, ``cpu`` or the device."""
        return "files" if self.streaming else str(self.images.device)

    def plan(self, batches: list[Tensor]) -> None:
        """Start reading ``batches`` (this process's index batches, in the order they will be asked for)."""
        if not self.streaming:
            return
        cuda = self.device.type == "cuda"
        reader = _Reader(self.images, self.images.cache_size, bytes_only=self.decode == "device")
        loader = DataLoader(reader, batch_sampler=[b.tolist() for b in batches], num_workers=self.workers,
                            collate_fn=_collate, pin_memory=cuda and self.decode == "workers",
                            prefetch_factor=self.prefetch if self.workers > 0 else None)
        self._batches = iter(loader)

    def __call__(self, idx: Tensor) -> Tensor:
        if not self.streaming:
            return self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
        if self._batches is None:
            self.plan([idx.cpu()])
        try:
            index, jpegs, images = next(self._batches)
        except StopIteration:
            raise RuntimeError("more batches asked for than were planned") from None
        except UnreadableImage as e:
            raise _clean(e) from None
        if not torch.equal(index, idx.cpu()):
            raise RuntimeError("the batch asked for is not the next planned one")
        if all(j is None for j in jpegs):
            return images.to(self.device, non_blocking=True)
        return self._decode_on_device(index, jpegs, images)

    def _decode_on_device(self, index: Tensor, jpegs: list[bytes | None], images: Tensor) -> Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        size = self.images.cache_size
        out = torch.empty(len(jpegs), 3, size, size, dtype=torch.uint8, device=self.device)
        rows = [k for k, j in enumerate(jpegs) if j is not None]
        data = [torch.frombuffer(bytearray(jpegs[k]), dtype=torch.uint8) for k in rows]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # a corrupt file, or no nvJPEG: decode these on the CPU, one by one
            decoded = [self.images.load(int(index[k]), size) for k in rows]
        for k, image in zip(rows, decoded):
            out[k] = fit_square(image.to(self.device), size)
        others = [k for k, j in enumerate(jpegs) if j is None]
        if others:
            out[others] = images.to(self.device, non_blocking=True)
        return out


def chunks(images: Tensor | FileImages, batch_size: int, workers: int = 4) -> Iterator[Tensor]:
    """The images in order, ``batch_size`` at a time (uint8, CPU or where they live); files are decoded
    at their evaluation size in DataLoader workers."""
    n = len(images)
    if not isinstance(images, FileImages):
        for start in range(0, n, batch_size):
            yield images[start:start + batch_size]
        return
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    loader = DataLoader(_Reader(images, images.size, bytes_only=False), batch_sampler=batches,
                        num_workers=min(workers, len(batches), os.cpu_count() or 1), collate_fn=_collate)
    try:
        for _, _, images in loader:
            yield images
    except UnreadableImage as e:
        raise _clean(e) from None
