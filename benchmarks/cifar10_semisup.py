"""CIFAR-10 semi-supervised benchmark: ``benchmarks/semisup.py --dataset cifar10`` (kept for its
command lines; see that script).

    python benchmarks/cifar10_semisup.py --data ../shared/data/cifar10-train-jpeg.tar.gz --scale cpu
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from semisup import CIFAR10 as SCALES  # noqa: E402,F401 -- the CIFAR-10 budgets, as before
from semisup import config_for as _config_for  # noqa: E402
from semisup import extract, main  # noqa: E402,F401


def config_for(scale, data, torchvision, download, overrides, model="resnet18"):
    return _config_for(scale, data, torchvision, download, overrides, model, "cifar10")


if __name__ == "__main__":
    main("cifar10")
