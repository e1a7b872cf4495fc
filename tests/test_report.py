"""Report figures from a fake pipeline run, and TensorBoard logging of RunLog records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simclrv2 import checkpoint, report
from simclrv2.data.datasets import ImageSet, Splits
from simclrv2.tracking import TensorBoardLog, encode_scalar_event, tfrecord
from simclrv2.train.runlog import RunLog
from test_inference import DIGITS, save_tiny

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one thread avoids OpenMP spin-waiting on shared, busy CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_metrics(directory: Path, stage: str, epochs: int, metric: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "metrics.jsonl", "w") as f:
        for e in range(1, epochs + 1):
            f.write(json.dumps({"stage": stage, "time": e, "epoch": e, "step": 3 * e, "loss": 2.0 / e, "lr": 0.1,
                                "images_per_s": 100.0, metric: 10.0 * e}) + "\n")


def fake_run(out: Path, with_student: bool = True) -> tuple[dict, Splits]:
    """A pipeline output directory: metrics of every stage, results rows, and the final student."""
    write_metrics(out / "pretrain", "pretrain", 4, "knn_top1")
    rows = []
    for fraction, labeled in ((0.01, 14), (0.1, 140)):
        tag = out / f"labels_{fraction:g}"
        for stage in ("supervised", "finetune", "distill"):
            write_metrics(tag / stage, stage, 3, "val_top1")
            rows.append({"stage": stage, "labels": fraction, "labeled_images": labeled, "top1": 50.0 + 100 * fraction,
                         "top5": 90.0, "params": 1000, "seconds": 1.0, "checkpoint": str(tag / stage / "last")})
        for stage in ("knn", "linear"):
            rows.append({"stage": stage, "labels": fraction, "labeled_images": labeled, "top1": 40.0 + 100 * fraction,
                         "top5": 80.0, "params": 900, "seconds": 0.5})
    if with_student:
        save_tiny(out / "labels_0.1" / "distill" / "last", "classifier")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(40) % 10
    val = ImageSet(images, labels, [f"v{i}" for i in range(40)], DIGITS)
    return {"dataset": "digits", "rows": rows}, Splits(val, val)


def test_write_figures(tmp_path):
    results, splits = fake_run(tmp_path / "run")
    out = tmp_path / "moved"
    (tmp_path / "run").rename(out)  # results.json paths point to the old place: found under out_dir
    paths = report.write_figures(out, results, splits, "cpu")
    names = [p.name for p in paths]
    assert names == ["training_curves.png", "accuracy_vs_labels.png", "tsne.png", "confusion_matrix.png"]
    for p in paths:
        assert p.parent == out and p.read_bytes().startswith(PNG_SIGNATURE) and p.stat().st_size > 5000
    md = report.figures_markdown(paths)
    assert md.startswith("## Figures")
    for name in names:
        assert f"]({name})" in md
    assert report.figures_markdown([]) == ""


def test_stage_dirs_and_student(tmp_path):
    results, _ = fake_run(tmp_path, with_student=False)
    dirs = report.stage_dirs(tmp_path, results)
    assert dirs[0] == ("pretrain", "pretrain", tmp_path / "pretrain")
    assert len(dirs) == 1 + 2 * 3
    assert ("distill", "labels 0.1", tmp_path / "labels_0.1" / "distill") in dirs
    assert report.final_student_row(results)["checkpoint"].endswith("labels_0.1/distill/last")
    records = report.read_metrics(tmp_path / "pretrain")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] and records[-1]["knn_top1"] == 40.0


def test_write_figures_survives_missing_student(tmp_path, caplog):
    results, splits = fake_run(tmp_path, with_student=False)
    paths = report.write_figures(tmp_path, results, splits, "cpu")
    assert [p.name for p in paths] == ["training_curves.png", "accuracy_vs_labels.png"]
    assert "could not draw the student figures" in caplog.text


def test_write_figures_without_matplotlib(tmp_path, monkeypatch):
    results, splits = fake_run(tmp_path, with_student=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert report.write_figures(tmp_path, results, splits, "cpu") == []
    assert not list(tmp_path.glob("*.png"))
    note = report.figures_markdown([])  # what report.md says instead of the figures
    assert note.startswith("## Figures") and "matplotlib is not installed" in note
    assert "pip install 'simclrv2[report]'" in note


def test_runlog_writes_tensorboard_scalars(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("SIMCLRV2_TENSORBOARD", raising=False)
    log = RunLog(tmp_path, "pretrain")
    log.write(epoch=1, step=5, loss=3.5, lr=0.1, images_per_s=250.0, knn_top1=20.0)
    log.write(epoch=2, step=10, loss=3.0, lr=0.05, images_per_s=260.0, note="text is skipped")
    assert len(list((tmp_path / "metrics.jsonl").read_text().splitlines())) == 2
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {"pretrain/loss", "pretrain/lr", "pretrain/images_per_s", "pretrain/knn_top1"}
    loss = acc.Scalars("pretrain/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([3.5, 3.0])
    assert [e.step for e in acc.Scalars("pretrain/knn_top1")] == [1]
    log.tensorboard.close()


def test_runlog_disabled(tmp_path, monkeypatch):
    RunLog(tmp_path / "rank1", "finetune", enabled=False).write(epoch=1, loss=1.0)
    assert not (tmp_path / "rank1").exists()

    monkeypatch.setenv("SIMCLRV2_TENSORBOARD", "0")
    tb = TensorBoardLog(tmp_path / "tb", "finetune")
    tb.write({"val_top1": 50.0}, step=1)
    assert not tb.active and not (tmp_path / "tb").exists()
    log = RunLog(tmp_path / "off", "finetune")
    (tmp_path / "off").mkdir()
    log.write(epoch=1, val_top1=50.0)
    assert (tmp_path / "off" / "metrics.jsonl").is_file() and not (tmp_path / "off" / "tensorboard").exists()


def test_event_records_equal_tensorboards_protobufs_and_framing(tmp_path):
    """Our bytes against tensorboard's own Event protobuf and its TFRecord reader (CRC checked)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    ref = event_pb2.Event(wall_time=1795943795.25, step=7, summary=summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag="pretrain/loss", simple_value=3.5),
        summary_pb2.Summary.Value(tag="pretrain/lr", simple_value=-0.125)]))
    ours = encode_scalar_event(1795943795.25, 7, {"pretrain/loss": 3.5, "pretrain/lr": -0.125})
    assert event_pb2.Event.FromString(ours) == ref
    first = event_pb2.Event(wall_time=2.5, file_version="brain.Event:2")
    assert event_pb2.Event.FromString(encode_scalar_event(2.5, file_version="brain.Event:2")) == first
    with open(tmp_path / "ref", "wb") as f:
        RecordWriter(f).write(ours)
    assert (tmp_path / "ref").read_bytes() == tfrecord(ours)


def test_writing_scalars_does_not_import_tensorflow(tmp_path):
    code = ("import sys; from simclrv2.tracking import TensorBoardLog, encode_scalar_event, tfrecord; "
            f"t = TensorBoardLog({str(tmp_path)!r}, 'x'); t.write({{'loss': 1.0}}, 1); t.close(); "
            "print('tensorflow' in sys.modules, 'tensorboard' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "SIMCLRV2_TENSORBOARD"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["False", "False"] and len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


def test_checkpoint_paths_in_results_are_loadable(tmp_path):
    """The fake student is a real classifier checkpoint (guards the fixture itself)."""
    fake_run(tmp_path)
    _, meta = checkpoint.load(tmp_path / "labels_0.1" / "distill" / "last")
    assert meta["kind"] == "classifier" and meta["classes"] == DIGITS
