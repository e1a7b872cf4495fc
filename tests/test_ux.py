"""What a newcomer trips over: warmup longer than the run, typos in keys, slow steps that look hung,
models at chance reported as normal, a CPU without a recipe sized for it."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from torch import nn

from simclrv2.config import ConfigError, build_config, preset
from simclrv2.optim import lr_at
from simclrv2.train import runlog
from simclrv2.train.loop import Stage, fit
from simclrv2.train.stepper import Stepper, make_stepper


def _stepper(cfg_section, steps_per_epoch=10):
    return make_stepper(nn.Linear(2, 2), cfg_section, steps_per_epoch, 256, torch.device("cpu"))


# -- warmup ------------------------------------------------------------------------------------------------

def test_imagenet_warmup_is_five_percent_of_any_length():
    im = preset("imagenet").pretrain
    assert im.warmup() == 40 == 0.05 * im.epochs  # the paper's 40 of 800
    short = build_config("imagenet", overrides=["epochs=100"], stage="pretrain").pretrain
    assert short.warmup() == 5
    assert _stepper(short).warmup_steps == 50  # 5 epochs x 10 steps


@pytest.mark.parametrize("stage", ["pretrain", "distill"])
def test_folder_recipe_warmup_follows_the_run_length(stage):
    full = getattr(preset("folder"), stage)
    assert full.warmup() == 0.05 * full.epochs  # 10 of 200, 5 of 100: what the preset always had
    section = getattr(build_config("folder", overrides=[f"{stage}.epochs=3"]), stage)
    stepper = _stepper(section)
    assert stepper.warmup_steps == 1  # the official int(round(0.15 epochs x N // B)): 1.5 steps floor to 1
    # the rate reaches its peak and decays to (nearly) zero within the three epochs
    rates = [lr_at(i, stepper.peak_lr, stepper.warmup_steps, stepper.total_steps) for i in range(30)]
    assert max(rates) == pytest.approx(stepper.peak_lr) and rates[-1] < 0.02 * stepper.peak_lr  # official total: 31 steps


def test_warmup_epochs_given_later_win_over_the_fraction(tmp_path):
    cfg = build_config("folder", overrides=["warmup_epochs=2"], stage="pretrain")
    assert cfg.pretrain.warmup_fraction is None and cfg.pretrain.warmup() == 2
    assert build_config("folder", overrides=["warmup_epochs=2", "warmup_fraction=0.1", "epochs=50"],
                        stage="pretrain").pretrain.warmup() == 5
    (tmp_path / "c.yaml").write_text("pretrain:\n  warmup_epochs: 3\n")
    assert build_config("folder", config_file=str(tmp_path / "c.yaml")).pretrain.warmup() == 3
    with pytest.raises(ConfigError, match="warmup_fraction must be in"):
        build_config("folder", overrides=["warmup_fraction=2"], stage="pretrain")


def test_warmup_over_most_of_the_run_warns_once(caplog):
    digits = build_config("digits", overrides=["epochs=3"], stage="pretrain")  # 5 warmup epochs of 3
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        _stepper(digits.pretrain)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert "pretrain: warmup covers 5 of 3 epochs: the learning rate never reaches its peak" in lines[0]
    assert "pretrain.warmup_fraction=0.05" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        _stepper(build_config("digits", overrides=["epochs=8"], stage="pretrain").pretrain)  # 5 of 8
        _stepper(build_config("digits", overrides=["distill.epochs=3"]).distill)  # 3 of 3
    assert ["peaks" in m or "never reaches" in m for m in caplog.messages] == [True, True]
    assert "distill: warmup covers 3 of 3 epochs" in caplog.messages[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        _stepper(preset("digits").pretrain)  # 5 of 60: fine
        _stepper(build_config("folder", overrides=["epochs=3"], stage="pretrain").pretrain)
    assert caplog.messages == []


# -- typos -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,suggestion", [
    ("epoch=3", "did you mean 'epochs'?"),
    ("pretrain.epoch=3", "did you mean 'epochs'?"),
    ("bach_size=8", "did you mean 'batch_size'?"),
    ("imagesize=64", "did you mean 'image_size'?"),
    ("data.imagesize=64", "did you mean 'image_size'?"),
    ("warmup_fration=0.1", "did you mean 'warmup_fraction'?"),
    ("lables=0.1", "did you mean 'labels'?"),
])
def test_a_mistyped_key_gets_the_closest_one(override, suggestion):
    with pytest.raises(ConfigError) as e:
        build_config("digits", overrides=[override], stage="pretrain")
    assert suggestion in str(e.value)


def test_no_suggestion_for_a_key_like_none():
    with pytest.raises(ConfigError) as e:
        build_config("digits", overrides=["zzz=1"], stage="pretrain")
    assert "did you mean" not in str(e.value)


# -- progress by step --------------------------------------------------------------------------------------

def _slow_fit(tmp_path, monkeypatch, sleep_s, slow_s, steps=2):
    monkeypatch.setattr(runlog, "SLOW_STEP_S", slow_s)
    net = nn.Linear(2, 1)
    stage = Stage("pretrain", tmp_path, net, Stepper(torch.optim.SGD(net.parameters(), lr=0.1), 0.1, 0, 100), {},
                  num_items=4 * steps, batch_size=4, epochs=1, drop_last=True, order=torch.Generator().manual_seed(0))
    x = torch.randn(4 * steps, 2)
    sleeps = list(sleep_s) if isinstance(sleep_s, (list, tuple)) else [sleep_s] * steps

    def loss_of(idx):
        time.sleep(sleeps.pop(0))
        return net(x[idx]).pow(2).mean()

    fit(stage, loss_of)


def test_slow_steps_get_a_line_each_and_a_heartbeat(tmp_path, monkeypatch, capsys):
    _slow_fit(tmp_path, monkeypatch, sleep_s=0.6, slow_s=0.2)
    err = capsys.readouterr().err
    # while the first step runs: a heartbeat; when it ends: its time and images/s
    assert "pretrain 1/1: step 1/2 running for" in err
    assert "pretrain 1/1: step 1/2 took 0." in err and "images/s), loss" in err
    assert "pretrain 1/1: step 2/2 took" in err
    assert "step 2/2 running for" not in err  # no longer than step 1: its own line is enough


def test_a_step_much_longer_than_the_others_gets_a_heartbeat(tmp_path, monkeypatch, capsys):
    _slow_fit(tmp_path, monkeypatch, sleep_s=[0.3, 0.3, 2.0], slow_s=0.1, steps=3)
    err = capsys.readouterr().err
    assert "step 1/3 running for" in err and "step 2/3 running for" not in err
    assert "step 3/3 running for" in err and "step 3/3 took 2." in err


def test_fast_steps_only_move_the_bar(tmp_path, monkeypatch, capsys):
    _slow_fit(tmp_path, monkeypatch, sleep_s=0.0, slow_s=5.0, steps=3)
    err = capsys.readouterr().err
    assert "took" not in err and "running for" not in err


def test_the_heartbeat_stops_with_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runlog, "SLOW_STEP_S", 0.05)
    net = nn.Linear(2, 1)
    stage = Stage("pretrain", tmp_path, net, Stepper(torch.optim.SGD(net.parameters(), lr=0.1), 0.1, 0, 100), {},
                  num_items=8, batch_size=4, epochs=1, drop_last=True, order=torch.Generator().manual_seed(0))
    with pytest.raises(ZeroDivisionError):
        fit(stage, lambda idx: 1 / 0)
    capsys.readouterr()
    time.sleep(0.3)
    assert "running for" not in capsys.readouterr().err


# -- models at chance, top-5 of few classes ----------------------------------------------------------------

def test_top5_only_below_the_number_of_classes():
    from simclrv2.core.metrics import topk_accuracy

    labels = torch.tensor([0, 1, 2, 3])
    assert set(topk_accuracy(torch.randn(4, 4), labels)) == {"top1"}  # top-5 of 4 classes is always 100
    assert set(topk_accuracy(torch.randn(4, 5), labels)) == {"top1"}
    assert set(topk_accuracy(torch.randn(4, 6), labels)) == {"top1", "top5"}


LABELS = torch.tensor([0, 1, 2, 3] * 10)
QUARTER_RIGHT = torch.cat([LABELS[:10], (LABELS[10:] + 1) % 4])  # right on 10 of 40


@pytest.mark.parametrize("logits,finding", [
    (torch.zeros(40, 4), "the outputs are the same for every one of the 40 images"),
    (torch.tensor([[5.0, 0, 0, 0]] * 20 + [[4.0, 1, 0, 0]] * 20), "it answers class 0 for every one of the 40"),
    # chance is 25%, and 25% + two standard errors (2 x 6.8%) is not beaten
    (torch.eye(4)[QUARTER_RIGHT], "top-1 25.00% is no better than chance (25.00%"),
    (torch.eye(4)[(LABELS + 1) % 4], "top-1 0.00% is no better than chance"),
])
def test_outputs_that_say_nothing_are_named(logits, finding):
    from simclrv2.core.metrics import degenerate

    assert finding in degenerate(logits, LABELS)


def test_a_good_model_is_not_flagged():
    from simclrv2.core.metrics import chance_level, degenerate

    labels = torch.tensor([0, 1, 2, 3] * 10)
    assert degenerate(torch.eye(4)[labels], labels) is None
    good = torch.eye(4)[labels]
    good[:8] = torch.eye(4)[(labels[:8] + 1) % 4]  # 80% right
    assert degenerate(good, labels) is None
    assert chance_level(labels) == pytest.approx((25.0, 100 * (0.25 + 2 * (0.25 * 0.75 / 40) ** 0.5)))
    assert degenerate(torch.zeros(1, 4), labels[:1]) is None  # one image says nothing either way


def test_evaluate_warns_about_a_constant_classifier_and_has_no_top5_for_four_classes(tmp_path, capsys, caplog):
    from conftest import write_image_folder
    from simclrv2 import checkpoint
    from simclrv2.cli import main
    from simclrv2.config import Config
    from simclrv2.models.networks import build_network

    arch = {"model": "resnet18", "width": 0.125, "sk_ratio": 0.0, "cifar_stem": True, "head_layers": 2,
            "head_dim": None, "proj_dim": 16, "head_kept": 0, "num_classes": 4}
    classes = ["a", "b", "c", "d"]
    folder = write_image_folder(tmp_path / "data", classes, per_class=5, size=12)
    net = build_network(arch)
    nn.init.zeros_(net.fc.weight)
    nn.init.zeros_(net.fc.bias)  # logits 0: a quarter for each class
    cfg = Config()
    cfg.data.dataset, cfg.data.path, cfg.data.image_size, cfg.workers, cfg.device = "folder", str(folder), 8, 1, "cpu"
    checkpoint.save(tmp_path / "ckpt" / "last", net, {"kind": "classifier", "stage": "supervised", "arch": arch,
                                                      "classes": classes, "image_size": 8, "config": cfg.to_dict()})
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        code = main(["evaluate", "--checkpoint", str(tmp_path / "ckpt" / "last"), "--split", "all",
                     "--out", str(tmp_path / "ev")])
    out = capsys.readouterr().out
    assert code == 0
    assert "classifier: top1 25.00" in out and "top5" not in out
    assert any("evaluate: the outputs are the same for every one of the 20 images" in m for m in caplog.messages)


def test_pipeline_report_marks_rows_at_chance():
    from simclrv2.pipeline import chance_warning, render_report, results_table

    rows = [{"stage": "supervised", "labels": 0.1, "labeled_images": 4, "top1": 25.0, "top5": None, "params": 1000,
             "seconds": 1.0},
            {"stage": "finetune", "labels": 0.1, "labeled_images": 4, "top1": 90.0, "top5": None, "params": 1000,
             "seconds": 1.0},
            {"stage": "knn", "labels": 0.1, "labeled_images": 4, "top1": 80.0, "params": 1000, "seconds": 1.0}]
    results = {"dataset": "folder", "model": "resnet18", "width": 0.5, "train_images": 36, "val_images": 40,
               "device": "cpu", "torch": torch.__version__, "seconds": 3.0, "rows": rows, "chance_top1": 25.0,
               "chance_bar_top1": 38.7,
               "pretrain": {"epochs": 1, "seconds": 1.0, "knn_top1_all_labels": None}}
    report = render_report(results)
    assert "top-5" not in report  # four classes: no top-5 column
    assert "| 0.1 | 4 | supervised | 25.00 (chance) | 0.00M | 1.0 |" in report
    assert "| 0.1 | 4 | finetune | 90.00 | 0.00M | 1.0 |" in report
    assert "**Warning**: the rows marked (chance)" in report
    assert chance_warning(results).endswith("10% supervised (25.00); these models learned nothing usable")
    rows[1]["top5"] = 99.0
    assert "top-5 (%)" in results_table(rows)  # with more classes the column stays
    results["rows"] = rows[1:]
    assert chance_warning(results) is None and "Warning" not in render_report(results)


# -- your own photos on a CPU ------------------------------------------------------------------------------

def _photos(root, size=(200, 150), per_class=3):
    import numpy as np
    from PIL import Image

    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((size[1], size[0], 3), 25 * i, np.uint8)).save(root / c / f"{i}.jpg")
    return root


def _resolve(*argv):
    from simclrv2.cli import build_parser, resolve_config

    return resolve_config(build_parser().parse_args(["pretrain", "--out", "unused", *argv]), "pretrain")


def test_without_a_gpu_photos_get_the_cpu_recipe_and_are_told_how_to_get_the_full_one(tmp_path, caplog,
                                                                                       monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = _photos(tmp_path / "photos", size=(240, 180))
    with caplog.at_level(logging.INFO, logger="simclrv2"):
        cfg = _resolve("--data", str(folder))
    assert cfg.recipe == "cpu"  # saved resolved in config.yaml
    assert (cfg.data.image_size, cfg.model.model, cfg.model.width) == (96, "resnet18", 1.0)
    assert (cfg.pretrain.batch_size, cfg.distill.batch_size, cfg.finetune.batch_size) == (64, 64, 64)
    line = next(m for m in caplog.messages if "CPU recipe" in m)
    assert line.startswith("--data without --preset: no GPU, so the CPU recipe for 6 images (median short side "
                           "180 px): image_size=96 (full: 176), resnet18, batch 64 (full: 256)")
    assert "recipe=full for the recipe sized for a GPU" in line
    full = _resolve("--data", str(folder), "recipe=full")
    assert (full.recipe, full.data.image_size, full.pretrain.batch_size) == ("full", 176, 256)
    assert _resolve("--data", str(folder), "--device", "cuda").recipe == "full"  # asked for a GPU: no survey of one
    assert _resolve("--data", str(folder), "recipe=cpu", "batch_size=32").pretrain.batch_size == 32  # overrides win
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _resolve("--data", str(folder)).recipe == "full"
    with pytest.raises(ConfigError, match="recipe must be auto, cpu or full"):
        _resolve("--data", str(folder), "recipe=laptop")


def test_the_cpu_recipe_caps_resolution_and_network():
    from simclrv2.config import FOLDER_LARGE, folder_defaults

    assert folder_defaults([500] * 3, FOLDER_LARGE, "cpu") == {
        "data": {"image_size": 96}, "model": {"model": "resnet18", "cifar_stem": False},
        "pretrain": {"batch_size": 64}, "distill": {"batch_size": 64}}
    assert folder_defaults([32] * 3, 100, "cpu")["data"] == {"image_size": 32}  # never upsampled
    assert folder_defaults([32] * 3, 100, "cpu")["model"]["cifar_stem"] is True
    assert folder_defaults([500] * 3, FOLDER_LARGE)["model"]["model"] == "resnet50"  # full: unchanged


def test_the_recipe_is_saved_in_config_yaml(tmp_path, monkeypatch):
    import yaml

    from simclrv2.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = _photos(tmp_path / "photos", size=(48, 48), per_class=4)
    assert main(["pretrain", "--data", str(folder), "--out", str(tmp_path / "run"), "epochs=0", "workers=0",
                 "width=0.125"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["recipe"] == "cpu" and saved["pretrain"]["batch_size"] == 64 and saved["data"]["image_size"] == 48


# -- ONNX -------------------------------------------------------------------------------------------------

def _classifier_checkpoint(tmp_path, crop="full"):
    from simclrv2 import checkpoint
    from simclrv2.config import Config
    from simclrv2.models.networks import build_network

    arch = {"model": "resnet18", "width": 0.125, "sk_ratio": 0.0, "cifar_stem": False, "head_layers": 2,
            "head_dim": None, "proj_dim": 16, "head_kept": 0, "num_classes": 3}
    torch.manual_seed(0)
    net = build_network(arch)
    nn.init.normal_(net.fc.weight, std=2.0)
    cfg = Config()
    cfg.data.dataset, cfg.data.image_size, cfg.data.crop = "folder", 40, crop
    checkpoint.save(tmp_path / "ckpt" / "last", net, {"kind": "classifier", "stage": "supervised", "arch": arch,
                                                      "classes": ["cat", "dog", "frog"], "image_size": 40,
                                                      "config": cfg.to_dict()})
    return tmp_path / "ckpt" / "last", net.eval()


def _example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "onnx_predict.py"
    spec = importlib.util.spec_from_file_location("onnx_predict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("crop", ["full", "square"])
def test_onnx_example_gives_the_probabilities_of_predict(tmp_path, capsys, crop):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from conftest import write_image_folder
    from simclrv2.cli import main
    from simclrv2.data.datasets import list_images
    from simclrv2.inference.predict import predict_files

    ckpt, net = _classifier_checkpoint(tmp_path, crop)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    photos = write_image_folder(tmp_path / "photos", ("a", "b"), per_class=3, size=57)  # odd size: crop and resize
    files = list_images(photos)
    reference, _ = predict_files(net, ["cat", "dog", "frog"], 40, files, top=3, workers=1, crop=crop)
    example = _example()
    got = example.predict(tmp_path / "m.onnx", files, top=3)
    assert [g[0] for g in got] == [r.path for r in reference]
    for (_, classes), r in zip(got, reference):
        assert [c for c, _ in classes] == r.classes
        assert [p for _, p in classes] == pytest.approx(r.probabilities, abs=1e-4)
    capsys.readouterr()
    assert example.main([str(tmp_path / "m.onnx"), str(photos), "--top", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(files)


def test_onnx_export_without_the_extra_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import sys

    from simclrv2.cli import main

    ckpt, _ = _classifier_checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("simclrv2 export: error: --format onnx needs the export extra")
    assert "pip install 'simclrv2[export]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_pretraining_warns_when_its_final_knn_is_at_chance(tmp_path, caplog, monkeypatch):
    from simclrv2.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = _photos(tmp_path / "photos", size=(24, 24), per_class=10)  # cat/i.jpg and dog/i.jpg are the same
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        assert main(["pretrain", "--data", str(folder), "--out", str(tmp_path / "run"), "epochs=2", "workers=0",
                     "width=0.125", "batch_size=6", "knn_every=1", "knn_k=3"]) == 0
    warned = [m for m in caplog.messages if m.startswith("pretrain: kNN: ")]
    assert len(warned) == 1 and ("no better than chance" in warned[0] or "same for every" in warned[0])
