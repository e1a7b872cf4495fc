"""Tiny end-to-end runs of each stage on the embedded digits (seconds each)."""

import json

import pytest
import torch

from simclrv2 import checkpoint
from simclrv2.config import build_config
from simclrv2.data.datasets import load
from simclrv2.train import classifier, distill, pretrain
from simclrv2.train.memory import capped_size

TINY = ["image_size=8", "model=resnet18", "width=0.125", "head_layers=2", "knn_every=1", "knn_k=20",
        "pretrain.epochs=2", "pretrain.batch_size=256", "finetune.epochs=2", "distill.epochs=1",
        "supervised.epochs=2", "device=cpu"]


@pytest.fixture(scope="module")
def tiny():
    cfg = build_config("digits", overrides=TINY)
    return cfg, load(cfg.data)


@pytest.fixture(scope="module")
def pretrained(tiny, tmp_path_factory):
    cfg, splits = tiny
    out = tmp_path_factory.mktemp("pre")
    result = pretrain.run(cfg, out, splits, show_progress=False)
    return out, result


def test_pretrain_writes_checkpoint_config_and_metrics(pretrained, tiny):
    out, result = pretrained
    assert (out / "config.yaml").is_file() and (out / "last" / "model.safetensors").is_file()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(r["loss"] > 0 and "knn_top1" in r and "images_per_s" in r for r in lines)
    _, meta = checkpoint.load(out / "last")
    assert meta["kind"] == "pretrain" and meta["epoch"] == 2 and meta["config"]["pretrain"]["epochs"] == 2


def test_finetune_then_distill(pretrained, tiny, tmp_path):
    cfg, splits = tiny
    ft = classifier.run_finetune(cfg, tmp_path / "ft", pretrained[0] / "last", splits, show_progress=False)
    assert (tmp_path / "ft" / "best" / "model.safetensors").is_file() and (tmp_path / "ft" / "labeled.txt").is_file()
    assert len(ft["history"]) == 2 and 0 <= ft["final"]["val_top1"] <= 100
    _, meta = checkpoint.load(tmp_path / "ft" / "last")
    assert meta["arch"]["head_kept"] == 1 and meta["labeled"] == len((tmp_path / "ft" / "labeled.txt").read_text().split())

    teacher_before, _ = checkpoint.load(tmp_path / "ft" / "last")
    ds = distill.run(cfg, tmp_path / "ds", tmp_path / "ft" / "last", splits, show_progress=False)
    assert ds["teacher_val"]["top1"] == pytest.approx(ft["final"]["val_top1"])
    teacher_after, _ = checkpoint.load(tmp_path / "ft" / "last")
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)
    net, meta = classifier.load_classifier(tmp_path / "ds" / "best")
    assert meta["stage"] == "distill" and net(torch.rand(2, 3, 8, 8)).shape == (2, 10)


def test_big_to_small_student(pretrained, tiny, tmp_path):
    cfg, splits = tiny
    classifier.run_finetune(cfg, tmp_path / "ft", pretrained[0] / "last", splits, show_progress=False)
    small = build_config("digits", overrides=TINY + ["distill.student=resnet18", "distill.student_width=0.0625"])
    ds = distill.run(small, tmp_path / "ds", tmp_path / "ft" / "last", splits, show_progress=False)
    _, teacher_meta = checkpoint.load(tmp_path / "ft" / "last")
    _, student_meta = checkpoint.load(tmp_path / "ds" / "last")
    assert student_meta["arch"]["width"] == 0.0625 and ds["params"] < teacher_meta["params"]


def test_supervised_baseline_uses_the_same_labels(tiny, tmp_path, pretrained):
    cfg, splits = tiny
    classifier.run_supervised(cfg, tmp_path / "sup", splits, show_progress=False)
    classifier.run_finetune(cfg, tmp_path / "ft", pretrained[0] / "last", splits, show_progress=False)
    assert (tmp_path / "sup" / "labeled.txt").read_text() == (tmp_path / "ft" / "labeled.txt").read_text()


def test_finetune_refuses_a_classifier_checkpoint_as_pretrained(tiny, tmp_path, pretrained):
    cfg, splits = tiny
    classifier.run_supervised(cfg, tmp_path / "sup", splits, show_progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="fine-tuning starts from a pretrain checkpoint"):
        classifier.run_finetune(cfg, tmp_path / "ft", tmp_path / "sup" / "last", splits)


def test_pretrain_with_memory_buffer(tiny, tmp_path):
    cfg, splits = tiny
    cfg = build_config("digits", overrides=TINY + ["memory_size=300", "memory_momentum=0.99", "pretrain.epochs=1"])
    result = pretrain.run(cfg, tmp_path, splits, show_progress=False)
    state = checkpoint.load_train_state(tmp_path / "last")
    queue = state["stateful"]["queue"]
    steps = result["history"][-1]["step"]
    assert int(queue["filled"]) == min(300, steps * 2 * 256)  # both views of every step were enqueued
    assert queue["keys"].shape[0] == 300 and queue["keys"].abs().sum() > 0
    assert torch.isfinite(torch.tensor(result["history"][-1]["loss"]))


def test_memory_buffer_larger_than_the_data_is_capped(tiny, tmp_path, caplog):
    cfg, splits = tiny
    cfg = build_config("digits", overrides=TINY + ["memory_size=1000000", "pretrain.epochs=1"])
    with caplog.at_level("WARNING"):
        pretrain.run(cfg, tmp_path, splits, show_progress=False)
    n = len(splits.train)
    queue = checkpoint.load_train_state(tmp_path / "last")["stateful"]["queue"]
    assert queue["keys"].shape[0] == 2 * (n - 256)  # both views of the training set minus one batch
    assert "pretrain.memory_size=1000000" in caplog.text and f"capped at {2 * (n - 256)}" in caplog.text


def test_memory_capacity_rule(caplog):
    with caplog.at_level("WARNING"):
        assert capped_size(300, images=1000, batch=256) == 300
        assert capped_size(1488, images=1000, batch=256) == 1488
    assert caplog.text == ""
    with caplog.at_level("WARNING"):
        assert capped_size(1489, images=1000, batch=256) == 1488
        assert capped_size(64, images=256, batch=256) == 0
    assert "capped at 1488" in caplog.text and "memory buffer off" in caplog.text


def test_finetune_epochs_follow_the_label_fraction(pretrained, tiny, tmp_path):
    _, splits = tiny
    table = TINY + ["finetune.epochs_by_labels=0.1:1,0.5:3"]
    ft = classifier.run_finetune(build_config("digits", overrides=table + ["labels=0.1"]), tmp_path / "a",
                                 pretrained[0] / "last", splits, show_progress=False)
    assert len(ft["history"]) == 1
    ft = classifier.run_finetune(build_config("digits", overrides=table + ["labels_per_class=2"]), tmp_path / "b",
                                 pretrained[0] / "last", splits, show_progress=False)
    assert len(ft["history"]) == 2  # no fraction given: finetune.epochs


def test_distill_labeled_term_chooses_and_records_its_subset(pretrained, tiny, tmp_path):
    cfg, splits = tiny
    classifier.run_finetune(cfg, tmp_path / "ft", pretrained[0] / "last", splits, show_progress=False)
    (tmp_path / "ft" / "labeled.txt").unlink()  # a teacher whose subset is unknown
    mixed = build_config("digits", overrides=TINY + ["distill.alpha=0.5", "labels_per_class=2"])
    distill.run(mixed, tmp_path / "ds", tmp_path / "ft" / "last", splits, show_progress=False)
    assert len((tmp_path / "ds" / "labeled.txt").read_text().split()) == 20
