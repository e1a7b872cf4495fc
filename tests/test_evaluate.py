"""``evaluate``: classes matched by name (reordered, partial, unknown), whole-folder scoring of other
data, and what it prints. The reference is ``predict``'s top-1 class name against the folder name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import write_image_folder
from simclrv2 import checkpoint
from simclrv2.cli import build_parser, main
from simclrv2.config import Config
from simclrv2.data import datasets
from simclrv2.eval.command import class_index
from simclrv2.inference.predict import predict_files
from simclrv2.models.networks import build_network

ARCH = {"model": "resnet18", "width": 0.125, "sk_ratio": 0.0, "cifar_stem": True, "head_layers": 2,
        "head_dim": None, "proj_dim": 16, "head_kept": 0, "num_classes": 3}
CLASSES = ["frog", "cat", "dog"]  # not the sorted order a folder gives: outputs must be matched by name


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, nn.Module, Path]:
    """A random classifier 'trained' on a cat/dog/frog folder whose classes are stored as CLASSES."""
    root = tmp_path_factory.mktemp("eval")
    train_dir = write_image_folder(root / "train_data", ("cat", "dog", "frog"), per_class=10, size=12)
    torch.manual_seed(0)
    net = build_network(ARCH)
    nn.init.normal_(net.fc.weight, std=2.0)
    cfg = Config()
    cfg.data.dataset, cfg.data.path, cfg.data.image_size, cfg.workers, cfg.device = "folder", str(train_dir), 8, 1, "cpu"
    meta = {"kind": "classifier", "stage": "supervised", "arch": ARCH, "classes": CLASSES, "image_size": 8,
            "config": cfg.to_dict()}
    checkpoint.save(root / "ckpt" / "last", net, meta)
    return root / "ckpt" / "last", net.eval(), train_dir


def reference_top1(net: nn.Module, folder: Path, known: set[str]) -> tuple[float, int]:
    """predict's top-1 class name compared with the folder name, over images of known classes."""
    files = [f for f in datasets.list_images(folder) if f.parent.name in known]
    predictions, _ = predict_files(net, CLASSES, 8, files, top=1, device="cpu", workers=1)
    hits = sum(p.classes[0] == Path(p.path).parent.name for p in predictions)
    return 100.0 * hits / len(files), len(files)


def evaluate(capsys, ckpt: Path, out: Path, *argv: str) -> tuple[int, dict, str, str]:
    code = main(["evaluate", "--checkpoint", str(ckpt), "--out", str(out), *argv])
    captured = capsys.readouterr()
    result = json.loads((out / "evaluation.json").read_text()) if code == 0 else {}
    return code, result, captured.out, captured.err


def test_class_index_by_name():
    index, unknown = class_index(["bird", "cat", "dog"], CLASSES)
    assert index.tolist() == [-1, 1, 2] and unknown == ["bird"]


@pytest.mark.parametrize("classes", [("cat", "dog", "frog"), ("dog", "frog")], ids=["reordered", "partial"])
def test_other_folder_is_scored_whole_by_class_name(capsys, tmp_path, trained, classes):
    ckpt, net, _ = trained
    folder = write_image_folder(tmp_path / "new", classes, per_class=6, size=16, seed=1)
    code, result, printed, err = evaluate(capsys, ckpt, tmp_path / "o", "--data", str(folder))
    assert code == 0, err
    expected, count = reference_top1(net, folder, set(classes))
    assert result["split"] == "all" and result["other_data"] and result["images"] == count == 6 * len(classes)
    assert result["classifier"]["top1"] == pytest.approx(expected, abs=1e-4)
    assert f"{count} images: every image of other data than the checkpoint" in printed


def test_unknown_classes_are_refused_unless_allowed(capsys, tmp_path, trained):
    ckpt, net, _ = trained
    folder = write_image_folder(tmp_path / "new", ("bird", "cat", "dog"), per_class=5, size=16, seed=2)
    code, _, _, err = evaluate(capsys, ckpt, tmp_path / "o", "--data", str(folder))
    assert code == 2 and "1 class(es) the checkpoint does not know: bird" in err and "--allow-unknown-classes" in err
    code, result, printed, err = evaluate(capsys, ckpt, tmp_path / "o", "--data", str(folder), "--allow-unknown-classes")
    assert code == 0, err
    expected, count = reference_top1(net, folder, {"cat", "dog"})
    assert result["images"] == count == 10 and result["skipped_unknown"] == 5 and result["unknown_classes"] == ["bird"]
    assert result["classifier"]["top1"] == pytest.approx(expected, abs=1e-4)
    assert "5 images of unknown classes left out" in printed


def test_the_checkpoints_own_data_is_scored_on_its_validation_split(capsys, tmp_path, trained):
    ckpt, net, train_dir = trained
    code, result, printed, err = evaluate(capsys, ckpt, tmp_path / "o")
    assert code == 0, err
    assert result["split"] == "val" and not result["other_data"] and result["images"] == 3  # 10% of 10 per class
    code, result, _, _ = evaluate(capsys, ckpt, tmp_path / "o", "--split", "all")
    expected, count = reference_top1(net, train_dir, set(CLASSES))
    assert result["images"] == count == 30 and result["classifier"]["top1"] == pytest.approx(expected, abs=1e-4)


def test_evaluate_has_no_run_directory_flags():
    help_text = build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "--checkpoint" in help_text and "--split" in help_text and "--allow-unknown-classes" in help_text
    for flag in ("--resume", "--overwrite", "--preset"):
        assert flag not in help_text
