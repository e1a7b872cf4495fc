"""Image files: decoding to RGB uint8, the kept copy's size cap, the evaluation crop, and
:class:`FileImages`, large folders read and decoded batch by batch instead of once.

Every path (decoded once, streamed, evaluation, ``predict``, ``embed``) decodes with
:func:`decode_file`, so they all see the same pixels:

* any mode becomes RGB: greyscale is repeated, CMYK converted, 16-bit samples scaled to 8 bits
  (``round(v / 257)``, not truncated; an image whose samples all have a zero low byte is 8-bit data
  shifted up, ``v << 8``, and keeps its high byte), transparent pixels (RGBA, LA, palette with a transparent
  index) composited on white;
* the EXIF orientation is applied (the image as a photo viewer shows it);
* an image over ``max_pixels`` is refused before it is decoded (a decompression bomb);
* the kept copy is downscaled, aspect ratio kept, so that its short side is at most the cap
  (:func:`cap_size`); training crops are cut from it, in its own coordinates. Evaluation views of
  streamed files (:meth:`FileImages.load`) are cut from the whole decoded image, as the official
  code's.

:class:`FileImages` stands where decoded images would: it has a length, a shape and lazy subsets.
Training reads it through :class:`simclrv2.data.feed.BatchFeed`, whose DataLoader workers only
read and decode.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
# Imported here, never inside the decoders: threads that import a module at once can see it half
# initialised (an ImportError in one of them).
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from simclrv2.data.errors import DataError
from simclrv2.data.gpu_augment import to_float

log = logging.getLogger(__name__)

JPEG_EXTENSIONS = (".jpg", ".jpeg")
MAX_PIXELS = 178_956_970  # PIL's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS)
CROPS = ("full", "square")
_warned: set[str] = set()  # unreadable files already reported by this process
Image.init()  # PIL imports its format plugins now, in one thread, not lazily on the decoding threads


class UnreadableImage(DataError):
    """An image file could not be decoded, or is over the pixel limit (raised only in strict mode)."""


def cap_size(image_size: int, min_scale: float = 0.08) -> int:
    """The default cap on the kept copy's short side: a minimum-scale square crop of a square image
    at this side is ``image_size`` px, i.e. not upsampled (792 px at 224, 226 at 64)."""
    return int(math.ceil(image_size / math.sqrt(min_scale)))


def capped_shape(height: int, width: int, cap: int) -> tuple[int, int]:
    """``(h, w)`` of an image once its short side is at most ``cap`` (aspect ratio kept)."""
    if min(height, width) <= cap:
        return height, width
    scale = cap / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_short_side(image: Tensor, cap: int) -> Tensor:
    """uint8 ``[3, H, W]`` downscaled (antialiased bilinear) so its short side is at most ``cap``."""
    shape = capped_shape(*image.shape[-2:], cap)
    return image if shape == tuple(image.shape[-2:]) else TF.resize(image, list(shape), antialias=True).contiguous()


def fit_square(image: Tensor, size: int) -> Tensor:
    """Resize uint8 ``[3, H, W]`` so its short side is ``size`` (antialiased bilinear), then centre-crop:
    the kept copy of the ``data.crop=square`` path (training crops cut from this square only)."""
    h, w = image.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        image = TF.resize(image, [max(size, round(h * scale)), max(size, round(w * scale))], antialias=True)
        h, w = image.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        image = image[..., top:top + size, left:left + size]
    return image.contiguous()


def eval_crop(image: Tensor, size: int) -> Tensor:
    """Evaluation view of uint8 ``[3, H, W]``, float32 ``[3, size, size]`` in [0, 1]: the official
    ``data_util.preprocess_for_eval`` (:func:`simclrv2.data.gpu_augment.to_float`: the central
    crop keeping 0.875 of the short side above 32 px, TF's bicubic resize without antialiasing,
    clipped)."""
    return to_float(image, size)


def _from_pil(im) -> Tensor:
    """A PIL image of any mode as RGB uint8 ``[3, H, W]`` (see the module docstring)."""
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):  # 16-bit (or 32-bit) greyscale
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or a.max() > 255:
            a = a / (256.0 if _shifted(a) else 257.0)
        grey = torch.from_numpy(np.clip(np.round(a), 0, 255).astype(np.uint8))
        return grey.expand(3, -1, -1).contiguous()
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def _shifted(samples: np.ndarray | Tensor) -> bool:
    """Whether 16-bit samples are 8-bit values written as ``v << 8`` (every low byte zero): their high
    byte is the value, where ``round(v / 257)`` would make half of them (``v > 128``) one lower."""
    return not bool((samples % 256).any())


def _to_uint8(image: Tensor) -> Tensor:
    """16-bit samples scaled to 8 bits (``round(v / 257)``: 65535 -> 255, ``v * 257 -> v``), not
    truncated; ``v << 8`` samples (:func:`_shifted`) keep their high byte."""
    if image.dtype == torch.uint8:
        return image
    wide = image.to(torch.float32)
    return wide.div_(256.0 if _shifted(wide) else 257.0).round_().clamp_(0, 255).to(torch.uint8)


def decode_file(path: str | Path, cap: int | None = None, max_pixels: int = MAX_PIXELS) -> Tensor:
    """One file as RGB uint8 ``[3, H, W]``, short side at most ``cap`` (None: as stored).

    Raises :class:`UnreadableImage` naming the file and the reason. PIL reads the header (size,
    mode, EXIF) first; torchvision decodes JPEGs without transparency (faster) and 16-bit RGB PNGs
    (at full depth, once PIL has read them whole: torchvision's libpng crashes the process on a PNG
    with too little image data), PIL everything else.
    """
    path = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise UnreadableImage(f"{path}: {w} x {h} = {w * h:,} pixels is over the limit of "
                                          f"{max_pixels:,} (data.max_pixels)")
                alpha = im.mode in ("RGBA", "LA", "PA", "P") or "transparency" in im.info
                image = None
                if im.format == "JPEG" and not alpha:
                    image = _decode_torchvision(path)
                elif im.format == "PNG" and not alpha and _sixteen_bit_rgb(im):
                    im.load()  # PIL checks the rows first: torchvision's libpng crashes on too little image data
                    image = _decode_torchvision(path)
                if image is None:
                    image = _from_pil(im)
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"{path}: over PIL's pixel limit ({e})") from None
    except UnreadableImage:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise UnreadableImage(f"{path}: cannot decode ({type(e).__name__}: {str(e)[:120]})") from None
    return image if cap is None else fit_short_side(image, cap)


def _sixteen_bit_rgb(im) -> bool:
    """A 16-bit RGB PNG, which PIL reads at 8 bits (torchvision at full depth)."""
    return bool(im.tile) and str(getattr(im.tile[0], "args", im.tile[0][-1])).startswith("RGB;16")


def _decode_torchvision(path: str) -> Tensor | None:
    try:
        return _to_uint8(decode_image(read_file(path), mode=ImageReadMode.RGB, apply_exif_orientation=True))
    except (RuntimeError, ValueError, OSError):
        return None  # e.g. a JPEG torchvision cannot read: PIL tries


def image_size_of(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` from the file's header (EXIF rotation applied), None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(str(path)) as im:
                w, h = im.size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                    w, h = h, w
                return h, w
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None


class FileImages:
    """``N`` image files, decoded when read.

    ``crop="full"`` (default): training reads each image with its aspect ratio, short side at most
    ``cap``; ``crop="square"``: the short side resized to ``size`` and centre-cropped (the old path).
    Indexing returns the evaluation view at ``size`` (:func:`eval_crop`). An unreadable file is an
    error in ``strict`` mode; otherwise it is logged and replaced by the next readable file, so a
    batch keeps its length.
    """

    def __init__(self, files: Sequence[str | Path], size: int, cap: int | None = None, strict: bool = False,
                 workers: int = 4, crop: str = "full", max_pixels: int = MAX_PIXELS) -> None:
        self.files = [str(f) for f in files]
        self.size = size
        self.cap = cap or cap_size(size)
        self.strict = strict
        self.workers = workers
        self.crop = crop
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), 3, self.size, self.size)

    def take(self, index: Tensor | Sequence[int]) -> "FileImages":
        """The lazy subset ``index`` (no decoding)."""
        index = torch.as_tensor(index, dtype=torch.long).tolist()
        return self._like([self.files[i] for i in index])

    def concat(self, other: "FileImages") -> "FileImages":
        return self._like(self.files + other.files)

    def _like(self, files: list[str]) -> "FileImages":
        return FileImages(files, self.size, self.cap, self.strict, self.workers, self.crop, self.max_pixels)

    def decode(self, i: int, whole: bool = False) -> Tensor:
        """Image ``i`` as kept for training (see the class; ``whole``: at its full size in the
        ``full`` mode, for the evaluation view); unreadable files as the class says."""
        for step in range(len(self.files)):
            j = (i + step) % len(self.files)
            try:
                cap = None if self.crop == "square" or whole else self.cap
                image = decode_file(self.files[j], cap, self.max_pixels)
            except UnreadableImage as e:
                if self.strict:
                    raise
                if self.files[j] not in _warned:
                    _warned.add(self.files[j])
                    log.warning("skipped %s (data.strict=false)", e)
                continue
            if step and self.files[i] not in _warned:
                _warned.add(self.files[i])
                log.warning("unreadable image %s: used %s in its place", self.files[i], self.files[j])
            return fit_square(image, self.size) if self.crop == "square" else image
        raise UnreadableImage(f"none of the {len(self.files)} images (e.g. {self.files[0]}) could be read")

    def load(self, i: int) -> Tensor:
        """Image ``i``'s evaluation view, float32 ``[3, size, size]`` (:func:`eval_crop`) of the whole
        decoded image (``square``: of the kept square)."""
        return eval_crop(self.decode(i, whole=True), self.size)

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> Tensor:
        """Evaluation views, float32 (threads); an int gives ``[3, S, S]``, anything else ``[B, 3, S, S]``."""
        if isinstance(index, int):
            return self.load(index)
        if isinstance(index, slice):
            rows = list(range(len(self.files)))[index]
        else:
            rows = torch.as_tensor(index, dtype=torch.long).reshape(-1).tolist()
        out = torch.empty(len(rows), 3, self.size, self.size)
        if not rows:
            return out

        def work(k: int) -> None:
            out[k] = self.load(rows[k])

        with ThreadPoolExecutor(max(1, min(self.workers, os.cpu_count() or 1) * 2)) as pool:
            list(pool.map(work, range(len(rows))))
        return out

    def __repr__(self) -> str:
        return f"FileImages({len(self.files)} files, size={self.size}, cap={self.cap}, crop={self.crop})"
