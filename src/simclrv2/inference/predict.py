"""Class predictions for image files with a classifier checkpoint (fine-tuned, distilled or supervised).

Images get the evaluation preprocessing of training, the official ``data_util.preprocess_for_eval``
(:func:`simclrv2.data.gpu_augment.to_float`): decoded to RGB (EXIF orientation applied), scaled to
[0, 1], the official central crop (a square of rint(0.875 x the short side); none at 32 px and
below) resized to the checkpoint's ``image_size`` with TensorFlow's bicubic resize (no
antialiasing), clipped to [0, 1] (no mean/std normalisation). Files are read ``batch_size`` at a
time, so memory does not grow with their number.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclrv2.checkpoint import atomic_write
from simclrv2.data import datasets
from simclrv2.inference import InferenceError
from simclrv2.core.batched import infer

__all__ = ["Prediction", "collect_images", "eval_settings", "eval_views", "probabilities", "top_classes",
           "predict_files", "format_table", "write_csv"]


@dataclass
class Prediction:
    """The ``top`` most probable classes of one image, most probable first."""

    path: str
    classes: list[str]
    probabilities: list[float]


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named on the command line: files as given, folders searched recursively.

    Missing paths and folders without images are errors (most likely a typo); files that cannot be
    decoded are reported later, by :func:`predict_files`.
    """
    files: list[Path] = []
    missing, empty = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found = datasets.list_images(p)
            if not found:
                empty.append(str(p))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            missing.append(str(p))
    if missing:
        raise datasets.DataError(f"path(s) not found: {', '.join(missing)}")
    if empty:
        raise datasets.DataError(f"no images ({', '.join(datasets.IMAGE_EXTENSIONS)}) under: {', '.join(empty)}")
    if not files:
        raise datasets.DataError("no images given")
    return files


def eval_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """How a checkpoint's network sees an image: its ``image_size`` and its training run's
    ``data.crop`` / ``data.cache_size`` (the keyword arguments of :func:`eval_views`)."""
    data = meta.get("config", {}).get("data", {})
    return {"image_size": int(meta["image_size"]), "crop": data.get("crop", "full"),
            "cap": data.get("cache_size") or None}


def eval_views(images: Sequence[Path | Tensor], image_size: int, crop: str = "full", cap: int | None = None,
               workers: int = 4) -> tuple[Tensor, list[str | None]]:
    """The evaluation views (float32 ``[N, 3, S, S]``) of image files, or of images already decoded
    (uint8 ``[3, H, W]``, taken as if read from a file), and per image None or why it could not be
    read (unreadable files are left out of the views)."""
    return datasets.decode_images(list(images), image_size, workers, "square" if crop == "square" else "eval", cap)


def probabilities(net: nn.Module, views: Tensor, device: torch.device, batch_size: int = 256) -> Tensor:
    """Softmax class probabilities (float32 ``[N, C]`` on CPU) of evaluation views."""
    return infer(net.to(device).eval(), views, device, batch_size=batch_size, amp=False).softmax(dim=1)


def top_classes(probs: Tensor, classes: Sequence[str], paths: Sequence[str], top: int = 5) -> list[Prediction]:
    """The ``top`` most probable classes of each row of ``probs``, most probable first."""
    if top < 1:
        raise InferenceError(f"--top must be >= 1, got {top}")
    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
    return [Prediction(str(path), [classes[c] for c in idx.tolist()], val.tolist())
            for path, idx, val in zip(paths, indices, values)]


@torch.no_grad()
def predict_files(net: nn.Module, classes: Sequence[str], image_size: int, files: Sequence[Path], top: int = 5,
                  device: torch.device | str = "cpu", batch_size: int = 256, workers: int = 4, crop: str = "full",
                  cap: int | None = None) -> tuple[list[Prediction], list[str]]:
    """Top-``top`` classes and softmax probabilities of each readable file; also why each unreadable
    file could not be read. ``crop`` is the training run's ``data.crop`` (``square``: the view is
    cut from the square kept in training; else from the whole decoded image)."""
    if top < 1:
        raise InferenceError(f"--top must be >= 1, got {top}")
    device = torch.device(device)
    net = net.to(device).eval()
    files = list(files)
    predictions: list[Prediction] = []
    unreadable: list[str] = []
    for start in range(0, len(files), batch_size):  # a batch of files at a time: memory does not grow with them
        batch = files[start:start + batch_size]
        views, errors = eval_views(batch, image_size, crop, cap, workers)
        readable = [i for i, e in enumerate(errors) if e is None]
        unreadable.extend(e for e in errors if e is not None)
        if readable:
            predictions += top_classes(probabilities(net, views, device, batch_size), classes,
                                       [batch[i] for i in readable], top)
    return predictions, unreadable


def format_table(predictions: Sequence[Prediction]) -> str:
    """A fixed-width table: one line per image and rank, the path shown on the first rank only."""
    path_w = max([len("image")] + [len(p.path) for p in predictions])
    class_w = max([len("class")] + [len(c) for p in predictions for c in p.classes])
    lines = [f"{'image':<{path_w}}  rank  {'class':<{class_w}}  probability"]
    for p in predictions:
        for rank, (c, prob) in enumerate(zip(p.classes, p.probabilities), start=1):
            shown = p.path if rank == 1 else ""
            lines.append(f"{shown:<{path_w}}  {rank:>4}  {c:<{class_w}}  {prob:>11.4f}")
    return "\n".join(lines)


def write_csv(path: str | Path, predictions: Sequence[Prediction]) -> Path:
    """CSV with columns ``path, rank, class, probability`` (one row per image and rank)."""
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "rank", "class", "probability"])
            for p in predictions:
                for rank, (c, prob) in enumerate(zip(p.classes, p.probabilities), start=1):
                    w.writerow([p.path, rank, c, f"{prob:.6f}"])

    atomic_write(path, write)
    return path
