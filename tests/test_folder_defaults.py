"""``--data DIR`` without ``--preset``: defaults for photographs chosen from the images found."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from simclrv2.cli import build_parser, resolve_config
from simclrv2.config import FOLDER_LARGE, folder_defaults
from simclrv2.data.survey import survey_folder


def write_photos(root: Path, sizes: list[tuple[int, int]], classes=("cat", "dog")) -> Path:
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(root / c / f"{i}.jpg")
    return root


def resolve(*argv: str):
    args = build_parser().parse_args(["pretrain", "--out", "unused", *argv])
    return resolve_config(args, "pretrain")


@pytest.mark.parametrize("sides,count,size,model,stem", [
    ([160, 150, 170], 40, 160, "resnet18", False),   # median short side, a multiple of 8
    ([333, 500, 375], 40, 224, "resnet18", False),   # large photographs: the paper's 224 px
    ([28, 28, 30], 60_000, 24, "resnet18", True),     # rounded down, never upsampled; CIFAR stem below 64 px
    ([500] * 3, FOLDER_LARGE, 224, "resnet50", False),  # ImageNet-sized folders get the paper's ResNet-50
    ([5], 1, 8, "resnet18", True),                    # at least 8 px
])
def test_folder_defaults_rule(sides, count, size, model, stem):
    assert folder_defaults(sides, count) == {"data": {"image_size": size}, "model": {"model": model, "cifar_stem": stem}}
    assert folder_defaults([], 0) == {}


def test_survey_reads_sizes(tmp_path):
    folder = write_photos(tmp_path / "photos", [(200, 150), (120, 160), (300, 300)])
    sides, count = survey_folder(folder)
    assert count == 6 and sorted(sides) == [120, 120, 150, 150, 300, 300]
    assert survey_folder(tmp_path / "missing") == ([], 0)


def test_data_without_preset_gets_photograph_defaults(tmp_path, caplog):
    folder = write_photos(tmp_path / "photos", [(200, 150), (210, 160), (190, 170)])
    with caplog.at_level(logging.INFO, logger="simclrv2"):
        cfg = resolve("--data", str(folder), "recipe=full")  # the GPU-sized recipe (without a GPU: tests/test_ux.py)
    assert (cfg.data.dataset, cfg.data.image_size, cfg.data.val_fraction) == ("folder", 160, 0.1)
    assert (cfg.model.model, cfg.model.width, cfg.model.cifar_stem) == ("resnet18", 1.0, False)
    assert cfg.aug.flip == 0.5 and cfg.aug.color_strength == 1.0  # not the digits preset's
    assert "folder defaults for 6 images (median short side 160 px): image_size=160, resnet18" in caplog.text
    # overrides and an explicit preset still win
    assert resolve("--data", str(folder), "image_size=64").data.image_size == 64
    digits = resolve("--data", str(folder), "--preset", "digits")
    assert digits.data.image_size == 8 and digits.data.dataset == "folder"
    assert resolve("--data", str(folder), "--preset", "folder", "recipe=full").data.image_size == 160


def test_other_defaults():
    assert resolve().data.dataset == "digits" and resolve().data.image_size == 8  # the embedded default
    cifar = resolve("--data", "somewhere", "--dataset", "cifar10")
    assert (cifar.data.dataset, cifar.data.image_size, cifar.model.cifar_stem) == ("cifar10", 32, True)
