"""Datasets decoded once with integer labels: uint8 tensors ``[N, 3, S, S]`` (CIFAR, STL-10, digits),
or, for image folders, each photo with its own aspect ratio (:class:`RaggedImages`, short side
at most the cap ``data.cache_size``) so that training crops are cut from the whole image.

Every loader returns a :class:`Splits`: the training images (labeled or not), the held-out
validation images, and optionally extra unlabeled images (STL-10's unlabeled split, or a flat
folder). Small datasets fit in memory this way and are augmented batch-wise on the device; image
folders too large for memory (``data.stream``) stay on disk as :class:`FileImages` and are
decoded batch by batch while training (:mod:`simclrv2.data.feed`).
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from simclrv2.config import DataConfig
from simclrv2.data.errors import DataError
from simclrv2.data.files import (MAX_PIXELS, FileImages, UnreadableImage, cap_size, capped_shape, decode_file,
                                 eval_crop, fit_short_side, fit_square, image_size_of)
from simclrv2.data.ragged import RaggedImages

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DATASETS = ("digits", "cifar10", "cifar100", "stl10", "folder")


@dataclass
class ImageSet:
    """Decoded images with labels (-1 = unlabeled) and the file name of each image."""

    images: Tensor | RaggedImages | FileImages  # uint8 [N, 3, S, S], photos of their own sizes, or files
    labels: Tensor  # int64 [N]
    names: list[str]
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Tensor | list[int]) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        images = self.images[index] if isinstance(self.images, Tensor) else self.images.take(index)
        return ImageSet(images, self.labels[index], [self.names[i] for i in index.tolist()],
                        self.classes)


@dataclass
class Splits:
    train: ImageSet  # training split; its labels are what labeled subsets are drawn from
    val: ImageSet | None  # held-out evaluation split
    unlabeled: ImageSet | None = None  # extra images without labels (pretraining/distillation only)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def pretrain_images(self) -> Tensor | RaggedImages | FileImages:
        """Every image that may be used without labels."""
        if self.unlabeled is None:
            return self.train.images
        if isinstance(self.train.images, Tensor) and isinstance(self.unlabeled.images, Tensor):
            return torch.cat([self.train.images, self.unlabeled.images])
        if type(self.train.images) is type(self.unlabeled.images):
            return self.train.images.concat(self.unlabeled.images)
        if len(self.train) == 0:
            return self.unlabeled.images
        raise DataError("the labeled and unlabeled images are stored differently; set data.stream=on or off")


def load(cfg: DataConfig, workers: int = 4, need_val: bool = True) -> Splits:
    """Load the dataset ``cfg.dataset`` resized to ``cfg.image_size``.

    ``need_val=False`` (nothing of the run reads the validation images): an image folder's
    validation split is listed but not decoded (left as :class:`FileImages`), unless ``cfg.strict``,
    which checks every image up front."""
    need_val = need_val or cfg.strict
    name = cfg.dataset
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        splits = _digits(cfg)
    elif name in ("cifar10", "cifar100"):
        splits = _cifar(cfg, name)
    elif name == "stl10":
        splits = _stl10(cfg)
    else:
        splits = _folder(cfg, workers, need_val)
    for part in (splits.train, splits.val, splits.unlabeled):
        if part is not None and isinstance(part.images, Tensor) and part.images.shape[-1] != cfg.image_size:
            part.images = resize_uint8(part.images, cfg.image_size)
    return splits


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Resize a uint8 batch to ``size`` x ``size`` (bilinear, antialiased when shrinking)."""
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=size < images.shape[-1])
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _hwc_to_tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def _split_by_class(labels: np.ndarray, val_fraction: float, order: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class hold-out: the last ``val_fraction`` of each class (in ``order``), rounded,
    and never a class's last training image (a class of one image keeps it for training)."""
    order = np.arange(len(labels)) if order is None else order
    train, val = [], []
    for c in np.unique(labels):
        members = order[labels[order] == c]
        n_val = min(int(round(len(members) * val_fraction)), len(members) - 1)
        train.extend(members[: len(members) - n_val])
        val.extend(members[len(members) - n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def _digits(cfg: DataConfig) -> Splits:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images): offline, no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = (bunch.images / 16.0 * 255.0).round().astype(np.uint8)  # [N, 8, 8], 17 grey levels
    images = torch.from_numpy(pixels)[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = bunch.target.astype(np.int64)
    # A fixed shuffle before the hold-out: the file is ordered by writer.
    order = np.random.default_rng(0).permutation(len(labels))
    train_idx, val_idx = _split_by_class(labels, cfg.val_fraction, order)
    names = [f"digit_{i:04d}" for i in range(len(labels))]
    classes = [str(c) for c in range(10)]
    full = ImageSet(images, torch.from_numpy(labels), names, classes)
    return Splits(full.subset(train_idx.tolist()), full.subset(val_idx.tolist()) if len(val_idx) else None)


def _require_path(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise DataError(f"dataset {cfg.dataset!r} needs a path: --data PATH")
    path = Path(cfg.path).expanduser()
    if not path.exists() and not cfg.download:
        raise DataError(f"data path does not exist: {path}")
    return path


def _cifar(cfg: DataConfig, name: str) -> Splits:
    """CIFAR-10/100 from torchvision's files (train = 50,000 training images, val = the test split)."""
    from torchvision import datasets

    root = _require_path(cfg)
    batches = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    if not cfg.download and not batches.exists() and root.is_dir() and \
            any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.rglob("*")):
        log.info("%s: no torchvision files under %s, reading it as an image folder", name, root)
        return _folder(cfg, workers=4)
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except RuntimeError as e:
        raise DataError(f"{name} not found under {root} ({e}); pass --download to fetch it, or use "
                        f"dataset=folder for an ImageFolder copy") from None

    def to_set(ds, split: str) -> ImageSet:
        labels = torch.tensor(ds.targets, dtype=torch.long)
        return ImageSet(_hwc_to_tensor(ds.data), labels, [f"{split}_{i:05d}" for i in range(len(labels))],
                        list(ds.classes))

    return Splits(to_set(train, "train"), to_set(test, "test"))


def _stl10(cfg: DataConfig) -> Splits:
    """STL-10: 5,000 labeled training images, 8,000 test images, 100,000 unlabeled (96 px)."""
    from torchvision import datasets

    root = _require_path(cfg)
    try:
        parts = {s: datasets.STL10(str(root), split=s, download=cfg.download) for s in ("train", "test", "unlabeled")}
    except RuntimeError as e:
        raise DataError(f"stl10 not found under {root} ({e}); pass --download to fetch it") from None
    classes = list(parts["train"].classes)

    def to_set(ds, split: str) -> ImageSet:
        labels = torch.as_tensor(ds.labels, dtype=torch.long).clamp(min=-1)
        return ImageSet(torch.from_numpy(ds.data), labels, [f"{split}_{i:06d}" for i in range(len(labels))], classes)

    return Splits(to_set(parts["train"], "train"), to_set(parts["test"], "test"), to_set(parts["unlabeled"], "unlabeled"))


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _folder(cfg: DataConfig, workers: int, need_val: bool = True) -> Splits:
    """An ImageFolder tree (``root/<class>/<image>``), or ``root/train`` + ``root/val`` trees, or a
    flat folder of unlabeled images. Without a ``val`` tree, the last ``val_fraction`` of each
    class's files in sorted order is held out (CIFAR-10 JPEG: files 4500..4999 of each class)."""
    root = _require_path(cfg)
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    if (root / "train").is_dir():
        train = _read_tree(root / "train", cfg, workers)
        val_dir = next((root / d for d in ("val", "validation", "test") if (root / d).is_dir()), None)
        if val_dir is not None:
            val = _read_tree(val_dir, cfg, workers, classes=train.classes, decode=need_val)
            return Splits(train, val)
    elif not need_val and cfg.stream != "on":  # split the file list, decode the training part only
        listed = _read_tree(root, cfg, workers, decode=False)
        if not listed.classes:
            train = _decoded(listed, root, cfg, workers)
            empty = train.subset([])
            empty.classes = []
            return Splits(empty, None, train)
        order = np.argsort(np.array(listed.names), kind="stable")
        train_idx, val_idx = _split_by_class(listed.labels.numpy(), cfg.val_fraction, order)
        return Splits(_decoded(listed.subset(train_idx.tolist()), root, cfg, workers),
                      listed.subset(val_idx.tolist()))
    else:
        train = _read_tree(root, cfg, workers)
    if not train.classes:
        empty = train.subset([])
        empty.classes = []
        return Splits(empty, None, train)
    order = np.argsort(np.array(train.names), kind="stable")
    train_idx, val_idx = _split_by_class(train.labels.numpy(), cfg.val_fraction, order)
    # a few images per class can leave the hold-out empty: no validation split then (no monitor)
    return Splits(train.subset(train_idx.tolist()), train.subset(val_idx.tolist()) if len(val_idx) else None)


def _read_tree(root: Path, cfg: DataConfig, workers: int, classes: list[str] | None = None, decode: bool = True
               ) -> ImageSet:
    """The images of a tree, decoded or streamed as ``cfg`` says (``decode=False``: only listed, as
    :class:`FileImages`)."""
    class_dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = list_images(root)
    if not files:
        raise DataError(f"no images found under {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    if class_dirs and all(f.parent != root for f in files):
        classes = classes or class_dirs
        index = {c: i for i, c in enumerate(classes)}
        labels = []
        for f in files:
            top = f.relative_to(root).parts[0]
            if top not in index:
                raise DataError(f"class folder {top!r} in {root} is not among the training classes")
            labels.append(index[top])
    else:
        classes, labels = [], [-1] * len(files)
    if not decode or should_stream(cfg, files):
        if decode:
            log.info("streaming %d images from %s (kept in memory they would take about %.1f GB)", len(files),
                     root, kept_bytes(cfg, files) / 2 ** 30)
        images = FileImages(files, cfg.image_size, cfg.cache_size or None, cfg.strict, workers, cfg.crop,
                            cfg.max_pixels)
        return ImageSet(images, torch.tensor(labels, dtype=torch.long), [str(f.relative_to(root)) for f in files],
                        classes)
    return _decode_files(files, labels, classes, root, cfg, workers)


def _decoded(listed: ImageSet, root: Path, cfg: DataConfig, workers: int) -> ImageSet:
    """A listed (not yet decoded) image set as :func:`_read_tree` would have made it from its files."""
    files = [Path(f) for f in listed.images.files]
    if should_stream(cfg, files):
        log.info("streaming %d images from %s (kept in memory they would take about %.1f GB)", len(files), root,
                 kept_bytes(cfg, files) / 2 ** 30)
        return listed
    return _decode_files(files, listed.labels.tolist(), listed.classes, root, cfg, workers)


def _decode_files(files: list[Path], labels: list[int], classes: list[str], root: Path, cfg: DataConfig,
                  workers: int) -> ImageSet:
    images, errors = decode_images(files, cfg.image_size, workers, cfg.crop, cfg.cache_size or None, cfg.max_pixels)
    bad = [e for e in errors if e is not None]
    if bad:
        if cfg.strict:
            raise DataError(f"{len(bad)} unreadable image(s) under {root} (data.strict=true): {'; '.join(bad[:3])}")
        log.warning("skipped %d unreadable image(s) under %s: %s", len(bad), root, "; ".join(bad[:3]))
    keep = [i for i, e in enumerate(errors) if e is None]
    if not keep:
        raise DataError(f"none of the {len(files)} images under {root} could be read")
    _warn_odd_sizes(images, cfg.image_size, root)
    names = [str(files[i].relative_to(root)) for i in keep]
    return ImageSet(images, torch.tensor([labels[i] for i in keep], dtype=torch.long), names, classes)


def _warn_odd_sizes(images: Tensor | RaggedImages, size: int, root: Path) -> None:
    """One line each for images smaller than the views (upsampled) and extreme aspect ratios (the
    evaluation crop sees only their central square)."""
    if not isinstance(images, RaggedImages) or len(images) == 0:
        return
    short, long = images.sizes.min(1).values, images.sizes.max(1).values
    small = int((short < size).sum())
    if small:
        log.warning("%d image(s) under %s have a side below image_size=%d px: their views are upsampled",
                    small, root, size)
    thin = int((long > 4 * short).sum())
    if thin:
        log.warning("%d image(s) under %s have an aspect ratio beyond 4:1: training crops reach their "
                    "ends, evaluation sees their central square", thin, root)


def memory_budget(cfg: DataConfig) -> int:
    """Bytes decoded images may take: ``memory_gb``, or half the machine's RAM."""
    if cfg.memory_gb > 0:
        return int(cfg.memory_gb * 2 ** 30)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


def kept_bytes(cfg: DataConfig, files: list[Path], sample: int = 256) -> int:
    """What decoding ``files`` once would keep in memory: ``3 S^2`` each for ``data.crop=square``;
    else each image at its own size with the short side capped, estimated from the headers of up
    to ``sample`` files spread over the list."""
    if cfg.crop == "square" or not files:
        return len(files) * 3 * cfg.image_size ** 2
    cap = cfg.cache_size or cap_size(cfg.image_size)
    picked = files[:: max(1, len(files) // sample)][:sample]
    sizes = [hw for hw in map(image_size_of, picked) if hw is not None]
    if not sizes:
        return len(files) * 3 * cap ** 2
    per_image = [3 * math.prod(capped_shape(h, w, cap)) for h, w in sizes]
    return int(len(files) * sum(per_image) / len(per_image))


def should_stream(cfg: DataConfig, files: list[Path] | int) -> bool:
    """Whether a folder of ``files`` is read from disk every epoch rather than decoded once (a count
    of files is taken as images of ``3 S^2`` bytes)."""
    if cfg.stream != "auto":
        return cfg.stream == "on"
    nbytes = files * 3 * cfg.image_size ** 2 if isinstance(files, int) else kept_bytes(cfg, files)
    return nbytes > memory_budget(cfg)


def decode_images(files: list[Path | Tensor], size: int, workers: int = 4, crop: str = "eval", cap: int | None = None,
                  max_pixels: int | None = None) -> tuple[Tensor | RaggedImages, list[str | None]]:
    """Decode files (:func:`simclrv2.data.files.decode_file`, as the streaming path does) as kept for
    ``crop``: ``full`` -- each at its own size, short side at most ``cap``, a :class:`RaggedImages`
    (a tensor when all are ``size`` x ``size``); ``square`` -- the short side resized to ``size``
    and centre-cropped; ``eval`` -- the evaluation view (:func:`eval_crop`, float32 ``[N, 3, size, size]``, what
    ``predict`` feeds) of the image as kept in training (short side at most ``cap``), so that
    ``predict``, ``embed``, ``evaluate`` and validation see the same views.

    Also returns, per file, None or why it could not be read; unreadable files are left out of the
    images. An item may also be an image decoded already (uint8 ``[3, H, W]``, as :func:`decode_file`
    returns it), which is kept as if it had been read from a file.
    """
    cap = cap or cap_size(size)
    decoded: list[Tensor | None] = [None] * len(files)
    errors: list[str | None] = [None] * len(files)

    def work(i: int) -> None:
        try:
            if isinstance(files[i], Tensor):  # decoded already (uint8 [3, H, W]): as if read from a file
                image = files[i] if crop == "square" else fit_short_side(files[i], cap)
            else:
                image = decode_file(files[i], None if crop == "square" else cap, max_pixels or MAX_PIXELS)
        except UnreadableImage as e:
            errors[i] = str(e)
            return
        decoded[i] = image if crop == "full" else fit_square(image, size) if crop == "square" else \
            eval_crop(image, size)

    threads = max(1, min(workers, os.cpu_count() or 1) * 2)
    chunk = max(1, len(files) // (threads * 8))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(len(files)), chunksize=chunk))
    kept = [im for im in decoded if im is not None]
    decoded.clear()  # kept holds the only references: RaggedImages.stack frees them as it copies
    if crop != "full" or all(im.shape[-2:] == (size, size) for im in kept):
        empty = torch.empty(0, 3, size, size, dtype=torch.float32 if crop == "eval" else torch.uint8)
        return (torch.stack(kept) if kept else empty), errors
    return RaggedImages.stack(kept, size, release=True), errors
