"""``evaluate --split all`` on a ``train/`` + ``val/`` tree whose training images are streamed from disk
and whose validation images are decoded into memory (``data.stream=auto`` with the training tree over
``data.memory_gb`` and the validation tree under it, as ImageNet on most machines)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import write_image_folder
from simclrv2 import checkpoint
from simclrv2.cli import main
from simclrv2.config import Config
from simclrv2.data import datasets
from simclrv2.data.files import FileImages
from simclrv2.inference.predict import predict_files
from simclrv2.models.networks import build_network

ARCH = {"model": "resnet18", "width": 0.125, "sk_ratio": 0.0, "cifar_stem": True, "head_layers": 2,
        "head_dim": None, "proj_dim": 16, "head_kept": 0, "num_classes": 3}
CLASSES = ["cat", "dog", "frog"]
TRAIN, VAL = 10, 2  # images per class: 30 x 432 bytes kept for training, 6 x 432 for validation
MEMORY_GB = str(3000 / 2 ** 30)  # between the two


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    write_image_folder(root / "data" / "train", CLASSES, per_class=TRAIN, size=12)
    write_image_folder(root / "data" / "val", CLASSES, per_class=VAL, size=12, seed=1)
    torch.manual_seed(0)
    net = build_network(ARCH)
    nn.init.normal_(net.fc.weight, std=2.0)
    cfg = Config()
    cfg.data.dataset, cfg.data.path, cfg.data.image_size, cfg.workers, cfg.device = \
        "folder", str(root / "data"), 8, 1, "cpu"
    cfg.data.memory_gb = float(MEMORY_GB)
    checkpoint.save(root / "ckpt" / "last", net, {"kind": "classifier", "stage": "supervised", "arch": ARCH,
                                                  "classes": CLASSES, "image_size": 8, "config": cfg.to_dict()})
    return root, net.eval(), cfg


def test_the_tree_is_stored_mixed(tree):
    _, _, cfg = tree
    splits = datasets.load(cfg.data, workers=1)
    assert isinstance(splits.train.images, FileImages) and not isinstance(splits.val.images, FileImages)


def test_evaluate_split_all_scores_streamed_and_decoded_images_together(capsys, tree):
    root, net, _ = tree
    out = root / "out"
    code = main(["evaluate", "--checkpoint", str(root / "ckpt" / "last"), "--split", "all", "--out", str(out),
                 "--data", str(root / "data"), f"data.memory_gb={MEMORY_GB}", "workers=1", "device=cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "evaluation.json").read_text())
    files = datasets.list_images(root / "data" / "train") + datasets.list_images(root / "data" / "val")
    predictions, _ = predict_files(net, CLASSES, 8, files, top=1, device="cpu", workers=1)
    expected = 100.0 * sum(p.classes[0] == p.path.split("/")[-2] for p in predictions) / len(files)
    assert result["split"] == "all" and result["images"] == len(files) == 3 * (TRAIN + VAL)
    assert result["classifier"]["top1"] == pytest.approx(expected, abs=1e-4)
