"""A quick look at a folder of images before training: how many there are and how large.

Only image headers are read (PIL opens lazily), from an evenly spaced sample of the files, so this
takes well under a second even for large folders. ``config.folder_defaults`` turns the result into
a resolution and a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simclrv2.data.datasets import list_images


def survey_folder(root: str | Path, sample: int = 256) -> tuple[list[int], int]:
    """``(short sides of up to `sample` images, number of images)`` under ``root``; unreadable files are
    left out of the sample. A missing folder gives ``([], 0)`` (the data loader reports it)."""
    from PIL import Image

    root = Path(root).expanduser()
    if not root.is_dir():
        return [], 0
    files = list_images(root)
    step = max(1, len(files) // sample)
    sides = []
    for f in files[::step][:sample]:
        try:
            with Image.open(f) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, Image.DecompressionBombError):  # the loader reports these files
            continue
    return sides, len(files)


def recipe_line(short_sides: list[int], count: int, recipe: str, full: dict[str, Any], why: str = "") -> str:
    """What the folder defaults chose from the images, for the start of a run; with ``recipe == "cpu"``
    also what was made smaller for a CPU (``why``: e.g. "no GPU") and how to get the full recipe."""
    from simclrv2.config import FOLDER_CPU, FOLDER_CPU_MAX_SIZE, PRESETS

    median = sorted(short_sides)[len(short_sides) // 2]
    found = f"{count} images (median short side {median} px)"
    size, model = full["data"]["image_size"], full["model"]["model"]
    stem = ", cifar_stem" if full["model"]["cifar_stem"] else ""
    if recipe != "cpu":
        return (f"folder defaults for {found}: image_size={size}, {model}{stem}; change them with key=value or "
                f"choose --preset")
    small = min(size, FOLDER_CPU_MAX_SIZE)
    return (f"{why + ', so ' if why else ''}the CPU recipe for {found}: image_size={small}"
            f"{f' (full: {size})' if small != size else ''}, resnet18"
            f"{f' (full: {model})' if model != 'resnet18' else ''}"
            f"{', cifar_stem' if small < 64 else ''}, batch {FOLDER_CPU['pretrain']['batch_size']} (full: "
            f"{PRESETS['folder']['pretrain']['batch_size']}), sized so that an epoch of 1,000 photos takes about a "
            f"minute on 2 cores; recipe=full for the recipe sized for a GPU")
