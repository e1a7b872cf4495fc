"""Shared fixtures: small image folders written by the tests themselves, and threads for 2-core CI."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo  # noqa: F401 - before any TensorFlow import: torch's first optimizer imports it, and
# after TensorFlow its triton import segfaults (tests/official.py and test_tf_import.py import TensorFlow)

torch.set_num_threads(1)  # tiny networks: one thread is fastest, and CI has 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")  # so runs keep it (threads=0 respects OMP_NUM_THREADS)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the official TF2 code (tests/official.py) is tf.keras 2 code

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-train-jpeg.tar.gz"


def write_image_folder(root: Path, classes=("cat", "dog", "frog"), per_class=10, size=12, seed=0) -> Path:
    """An ImageFolder tree of small random PNG/JPEG images: root/<class>/<NNNN>.png."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c_i, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.full((size, size, 3), 40 + 70 * c_i, dtype=np.uint8)
            pixels = np.clip(base + rng.integers(0, 60, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:04d}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "images")
