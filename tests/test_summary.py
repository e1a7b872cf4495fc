"""The start-up summary block: its fields against the config, the network and the lr scaling rule."""

from __future__ import annotations

import math

import torch

from simclrv2.cli import main
from simclrv2.config import preset
from simclrv2.core import runtime
from simclrv2.data.datasets import ImageSet, Splits
from simclrv2.models.networks import build_pretrain_model
from simclrv2.train.summary import count_params
from simclrv2.train.summary import describe, format_block

TINY = ["image_size=8", "width=0.125", "head_layers=2", "knn_every=0", "device=cpu"]


def splits_of(train: int, val: int, unlabeled: int = 0) -> Splits:
    def part(n: int, classes: list[str]) -> ImageSet:
        return ImageSet(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), torch.zeros(n, dtype=torch.long),
                        [str(i) for i in range(n)], classes)

    return Splits(part(train, ["a", "b", "c"]), part(val, ["a", "b", "c"]), part(unlabeled, []) if unlabeled else None)


def test_describe_fields(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_amx_bf16", lambda: False)
    cfg = preset("digits")
    cfg.finetune.lr, cfg.finetune.lr_scaling = 0.01, "sqrt"
    fields = describe("finetune", cfg, splits_of(1200, 300, 5000), cfg.model, 2_800_000, "cpu", 2, "runs/ft",
                      cfg.finetune, 64, 0.01 * math.sqrt(64), 19, labeled="120 images")
    assert list(fields) == ["dataset", "labeled", "resolution", "model", "device", "threads", "batch", "lr", "epochs",
                            "out"]
    assert fields["dataset"] == "digits embedded: 1,200 train / 300 val / 5,000 unlabeled images, 3 classes"
    assert fields["resolution"] == "8 px"
    assert fields["model"] == "resnet18 x0.25, SK off, CIFAR stem, 2.80M parameters"
    assert fields["device"] == "cpu, 2 processes, float32" and fields["threads"] == f"{torch.get_num_threads()} per process"
    assert fields["batch"] == "64 global (32 per process)"
    assert fields["lr"].startswith("0.08 = 0.01 x sqrt(64) (lars")
    assert fields["epochs"] == f"{cfg.finetune.epochs} x 19 steps" and fields["out"] == "runs/ft"
    block = format_block("finetune", fields)
    assert block.splitlines()[0] == "== simclrv2 finetune" and len(block.splitlines()) == 1 + len(fields)


def test_a_stage_prints_its_summary(capsys, tmp_path):
    assert main(["pretrain", "--out", str(tmp_path / "pre"), *TINY, "epochs=0", "batch_size=64", "lr=0.5"]) == 0
    printed = capsys.readouterr().out
    lines = {line.split()[0]: line.split(None, 1)[1] for line in printed.splitlines() if line.startswith("  ")}
    cfg = preset("digits")
    cfg.model.width, cfg.model.head_layers = 0.125, 2
    assert printed.startswith("== simclrv2 pretrain")
    assert lines["dataset"] == "digits embedded: 1,438 train / 359 val images, 10 classes"
    assert lines["model"].endswith(f"{count_params(build_pretrain_model(cfg.model)) / 1e6:.2f}M parameters")
    assert lines["batch"] == "64 global" and lines["lr"].startswith(f"{0.5 * 64 / 256:.4g} = 0.5 x 64/256")
    assert lines["out"] == str(tmp_path / "pre")


def test_the_device_line_says_how_the_network_computes(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_amx_bf16", lambda: True)
    cfg = preset("digits")
    assert describe("pretrain", cfg, None, cfg.model, 1, "cpu", 1, None)["device"] == \
        "cpu, bf16 autocast (AMX; amp=false for float32)"
    cfg.amp = False
    assert describe("pretrain", cfg, None, cfg.model, 1, "cpu", 1, None)["device"] == "cpu, float32"
