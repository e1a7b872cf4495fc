"""From planned index batches to uint8 image batches on the training device.

Decoded datasets (a uint8 tensor, or :class:`RaggedImages` of photos with their own sizes) are
indexed where they live: on the GPU when they fit, otherwise in pinned host memory, copied batch by
batch. Image files (:class:`FileImages`) stream through DataLoader workers that only read and
decode the batches the epoch has planned, ahead of their use, each image as the decoded-once path
keeps it; the random crops (boxes drawn on each whole image) and the rest of the augmentation then
run batch-wise on the device (:mod:`simclrv2.data.gpu_augment`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from simclrv2.data.files import JPEG_EXTENSIONS, FileImages, UnreadableImage, fit_short_side, fit_square
from simclrv2.data.gpu_augment import _uniform_batch, to_float
from simclrv2.data.ragged import RaggedImages

log = logging.getLogger(__name__)

DECODERS = ("workers", "device")


def fits_on_device(nbytes: int, device: torch.device, share: float = 0.4) -> bool:
    """Whether ``nbytes`` take at most ``share`` of the device's free memory (always false off CUDA)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


class _Reader(Dataset):
    """Worker side: image ``i`` as kept for training (``train``) or its evaluation view, or only its
    JPEG bytes for device decoding (plain 8-bit JPEGs under the pixel limit)."""

    def __init__(self, images: FileImages, train: bool, bytes_only: bool) -> None:
        self.images, self.train, self.bytes_only = images, train, bytes_only

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, bytes | Tensor]:
        path = self.images.files[i]
        if self.bytes_only and path.lower().endswith(JPEG_EXTENSIONS) and _plain_jpeg(path, self.images.max_pixels):
            try:
                with open(path, "rb") as f:
                    return i, f.read()
            except OSError:
                pass
        return i, self.images.decode(i) if self.train else self.images.load(i)


def _plain_jpeg(path: str, max_pixels: int) -> bool:
    """An RGB or greyscale JPEG under the pixel limit (what nvJPEG decodes as the workers would)."""
    try:
        with Image.open(path) as im:
            return im.format == "JPEG" and im.mode in ("RGB", "L") and im.size[0] * im.size[1] <= max_pixels
    except Exception:  # noqa: BLE001 -- anything unusual: the workers' decoder reports it
        return False


def _collate(items: list[tuple[int, bytes | Tensor]]) -> tuple[Tensor, list[bytes | None], RaggedImages]:
    """``(index, jpeg bytes or None per image, the decoded images in one buffer)``: few large
    objects, as sending many small tensors between processes costs a file descriptor each."""
    index = torch.tensor([i for i, _ in items], dtype=torch.long)
    jpegs = [p if isinstance(p, bytes) else None for _, p in items]
    decoded = [p for _, p in items if isinstance(p, Tensor)]
    return index, jpegs, RaggedImages.stack(decoded, 0)


def _clean(error: UnreadableImage) -> UnreadableImage:
    """A worker's error re-raised by the DataLoader carries the worker's traceback; keep its message."""
    last = str(error).strip().splitlines()[-1]
    head, _, message = last.partition(": ")
    return UnreadableImage(message if head.endswith(UnreadableImage.__name__) else last)


class BatchFeed:
    """``feed(idx) ->`` uint8 ``[B, 3, S, S]`` or :class:`RaggedImages` on ``device``, for the
    batches announced by :meth:`plan`.

    ``decode="device"`` has the workers read JPEG bytes only and decodes each batch on the GPU
    (nvJPEG through ``torchvision.io.decode_jpeg``); other files are still decoded in the workers.
    """

    def __init__(self, images: Tensor | RaggedImages | FileImages, device: torch.device, on_device: bool = True,
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
        reader = _Reader(self.images, train=True, bytes_only=self.decode == "device")
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
        if any(j is not None for j in jpegs):
            images = self._decode_on_device(index, jpegs, images)
        images.size = self.images.size
        images = images.to(self.device, non_blocking=True)
        square = self.images.size
        if self.images.crop == "square" or bool((images.sizes == square).all()):
            return _uniform_batch(images)  # as the decoded-once path keeps images already square at size
        return images

    def _decode_on_device(self, index: Tensor, jpegs: list[bytes | None], images: RaggedImages) -> RaggedImages:
        rows = [k for k, j in enumerate(jpegs) if j is not None]
        data = [torch.frombuffer(bytearray(jpegs[k]), dtype=torch.uint8) for k in rows]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
        except RuntimeError:  # a corrupt file, or no nvJPEG: decode these on the CPU, one by one
            decoded = [self.images.decode(int(index[k])) for k in rows]
        out: list[Tensor | None] = [None] * len(jpegs)
        for k, image in zip(rows, decoded):
            image = image.to(self.device)
            out[k] = fit_square(image, self.images.size) if self.images.crop == "square" else \
                fit_short_side(image, self.images.cap)
        others = iter(range(len(images)))
        for k, j in enumerate(jpegs):
            if j is None:
                out[k] = images.image(next(others)).to(self.device)
        return RaggedImages.stack(out, self.images.size)


def chunks(images: Tensor | RaggedImages | FileImages, batch_size: int, workers: int = 4,
           device: torch.device | str | None = None) -> Iterator[Tensor]:
    """The evaluation views in order, float32 ``[B, 3, S, S]`` in [0, 1], ``batch_size`` at a time:
    the official ``preprocess_for_eval`` (:func:`simclrv2.data.gpu_augment.to_float`) of each
    kept image -- uint8 tensors on ``device`` (default: where they are), ragged images where they
    live, files decoded in DataLoader workers. Float tensors are taken as views already made
    (e.g. ``FileImages[...]``) and only moved."""
    n = len(images)
    if isinstance(images, Tensor):
        for start in range(0, n, batch_size):
            chunk = images[start:start + batch_size]
            chunk = chunk if device is None else chunk.to(device, non_blocking=True)
            yield chunk.float() if chunk.is_floating_point() else to_float(chunk, chunk.shape[-1])
        return
    if isinstance(images, RaggedImages):
        for start in range(0, n, batch_size):
            yield images.eval_views(start, start + batch_size)
        return
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    loader = DataLoader(_Reader(images, train=False, bytes_only=False), batch_sampler=batches,
                        num_workers=min(workers, len(batches), os.cpu_count() or 1), collate_fn=_collate)
    try:
        for _, _, batch in loader:
            yield _uniform_batch(batch)
    except UnreadableImage as e:
        raise _clean(e) from None
