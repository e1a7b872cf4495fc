"""A quick look at a folder of images before training: how many there are and how large.

Only image headers are read (PIL opens lazily), from an evenly spaced sample of the files, so this
takes well under a second even for large folders. ``config.folder_defaults`` turns the result into
a resolution and a network.
"""

from __future__ import annotations

from pathlib import Path

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
