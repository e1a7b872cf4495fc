"""Choosing the labeled images: by fraction, by count per class, or from a list of file names."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from simclrv2.data.datasets import DataError


def by_fraction(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Class-balanced indices of about ``fraction`` of the images, at least one per class.

    Deterministic for a seed: each class keeps ``max(1, round(fraction * n_c))`` images drawn
    without replacement.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"label fraction {fraction} is outside (0, 1]")
    counts = _class_members(labels)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(m, size=max(1, int(round(fraction * len(m)))), replace=False) for m in counts.values()]
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def by_count(labels: Tensor, per_class: int, seed: int = 0) -> Tensor:
    """``per_class`` images of every class, drawn deterministically for a seed."""
    if per_class < 1:
        raise DataError(f"labels per class must be >= 1, got {per_class}")
    members = _class_members(labels)
    small = {c: len(m) for c, m in members.items() if len(m) < per_class}
    if small:
        c, n = next(iter(small.items()))
        raise DataError(f"{per_class} labels per class asked, but class {c} has only {n} images "
                        f"({len(small)} class(es) are too small)")
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(m, size=per_class, replace=False) for m in members.values()]
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def from_file(names: list[str], path: str | Path) -> Tensor:
    """Indices of the images whose file names are listed in ``path`` (one per line).

    A line matches an image by its base name (``n01440764_10026.JPEG`` as in the ImageNet subset
    files published with SimCLR) or by its path relative to the dataset root. Listed names absent
    from the dataset are reported (a warning with their count), not an error, unless none is found.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"label file {path} is not UTF-8 text (byte {e.object[e.start]:#x} at offset {e.start}); "
                        f"save it as UTF-8") from None
    wanted = [line.strip() for line in text.splitlines() if line.strip()]
    if not wanted:
        raise DataError(f"label file {path} lists no images")
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)
        index.setdefault(Path(name).name, i)
    missing = [w for w in wanted if w not in index]
    if len(missing) == len(wanted):
        raise DataError(f"none of the {len(wanted)} names in {path} is in the dataset, e.g. {', '.join(missing[:5])}")
    if missing:  # e.g. the official ImageNet 1% list on a folder holding some of the classes
        logging.getLogger(__name__).warning(
            "%d of %d names in %s are not in the dataset (e.g. %s); using the %d found",
            len(missing), len(wanted), path, ", ".join(missing[:3]), len(wanted) - len(missing))
    return torch.tensor(sorted({index[w] for w in wanted if w in index}), dtype=torch.long)


def check_covers_classes(labels: Tensor, chosen: Tensor, classes: list[str]) -> None:
    """Every class must have at least one labeled image."""
    present = set(labels[chosen].tolist())
    absent = [classes[c] if c < len(classes) else str(c) for c in range(len(classes)) if c not in present]
    if absent:
        raise DataError(f"{len(absent)} class(es) have no labeled image: {', '.join(absent[:5])}")


def check_listable(names: list[str], chosen: Tensor) -> None:
    """A list file holds one name per line: a chosen name with a line break in it cannot be listed."""
    broken = [names[i] for i in chosen.tolist() if "\n" in names[i] or "\r" in names[i]]
    if broken:
        raise DataError(f"{len(broken)} labeled image name(s) contain a line break, e.g. {broken[0]!r}: "
                        f"labeled.txt lists one name per line; rename these files")


def save_list(names: list[str], chosen: Tensor, path: str | Path) -> None:
    """Write the chosen file names, one per line, so the subset can be reused with ``labels_file``."""
    from simclrv2.checkpoint import atomic_write

    check_listable(names, chosen)
    text = "".join(names[i] + "\n" for i in chosen.tolist())
    atomic_write(Path(path), lambda p: p.write_text(text))


def _class_members(labels: Tensor) -> dict[int, np.ndarray]:
    y = labels.numpy()
    classes = sorted(set(y.tolist()) - {-1})
    if not classes:
        raise DataError("the training split has no labeled images to choose from")
    return {c: np.flatnonzero(y == c) for c in classes}
