"""embed / predict / export on tiny untrained checkpoints built by the tests (no training)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from conftest import write_image_folder
from simclrv2 import checkpoint
from simclrv2.cli import main
from simclrv2.config import Config, DataConfig
from simclrv2.data import datasets
from simclrv2.data.feed import chunks
from simclrv2.inference.predict import predict_files
from simclrv2.models.networks import build_network

PRETRAIN_ARCH = {"model": "resnet18", "width": 0.125, "sk_ratio": 0.0, "cifar_stem": True, "head_layers": 2,
                 "head_dim": None, "proj_dim": 16, "head_kept": None, "num_classes": None}
CLASSIFIER_ARCH = {**PRETRAIN_ARCH, "num_classes": 10, "head_kept": 1}
FEATURE_DIM = 64  # resnet18 at width 0.125: 512 / 8
DIGITS = [str(c) for c in range(10)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These networks are tiny: one thread avoids OpenMP spin-waiting on shared, busy CI cores
    (measured 100x slower with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_tiny(stem: Path, kind: str, seed: int = 0) -> nn.Module:
    """A random network of the tiny architecture saved as a ``kind`` checkpoint trained on 8-px digits."""
    torch.manual_seed(seed)
    arch = CLASSIFIER_ARCH if kind == "classifier" else PRETRAIN_ARCH
    net = build_network(arch)
    for m in net.modules():  # non-trivial BatchNorm statistics and (for a classifier) logits
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    if kind == "classifier":
        nn.init.normal_(net.fc.weight, std=2.0)
        nn.init.normal_(net.fc.bias)
    cfg = Config()
    cfg.data.dataset, cfg.data.image_size, cfg.workers = "digits", 8, 1
    meta = {"kind": kind, "stage": "distill" if kind == "classifier" else "pretrain", "arch": arch,
            "classes": DIGITS, "image_size": 8, "config": cfg.to_dict()}
    checkpoint.save(stem, net, meta)
    return net.eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ckpts")
    return {"pretrain": root / "pretrain" / "last", "pretrain_net": save_tiny(root / "pretrain" / "last", "pretrain"),
            "classifier": root / "distill" / "last",
            "classifier_net": save_tiny(root / "distill" / "last", "classifier", seed=1)}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def direct(fn, images: torch.Tensor) -> torch.Tensor:
    """``fn`` on uint8 images stored at the model's size (<= 32 px: only converted) or on float views."""
    with torch.no_grad():
        return fn(images if images.is_floating_point() else images.float() / 255)


# ---------------------------------------------------------------------------- embed


def test_embed_pretrain_defaults_to_checkpoint_data(ckpts, tmp_path, capsys):
    out = tmp_path / "features.safetensors"
    code, stdout, _ = run_cli(capsys, "embed", "--checkpoint", ckpts["pretrain"], "--device", "cpu", "--out", out)
    assert code == 0 and str(out) in stdout
    tensors = load_file(str(out))
    assert set(tensors) == {"train_features", "train_labels", "val_features", "val_labels"}
    splits = datasets.load(DataConfig(dataset="digits", image_size=8))
    assert tensors["train_features"].shape == (len(splits.train), FEATURE_DIM)
    assert tensors["val_features"].shape == (len(splits.val), FEATURE_DIM)
    assert torch.equal(tensors["train_labels"], splits.train.labels)
    assert torch.equal(tensors["val_labels"], splits.val.labels)
    expected = direct(ckpts["pretrain_net"].encoder.forward_features, splits.val.images)
    torch.testing.assert_close(tensors["val_features"], expected, atol=1e-5, rtol=1e-5)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["classes"]) == DIGITS
    assert json.loads(meta["splits"]) == ["train", "val"]
    assert json.loads(meta["names"])["val"] == splits.val.names


def test_embed_head_layer_on_a_folder(ckpts, tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs", per_class=10, size=12)
    net = ckpts["pretrain_net"]
    data = DataConfig(dataset="folder", path=str(root), image_size=8)
    splits = datasets.load(data, workers=1)
    for layer, dim in ((2, 16), (1, FEATURE_DIM)):
        out = tmp_path / f"layer{layer}.safetensors"
        code, _, _ = run_cli(capsys, "embed", "--checkpoint", ckpts["pretrain"], "--data", root, "--layer", layer,
                             "--device", "cpu", "--out", out)
        assert code == 0
        tensors = load_file(str(out))
        assert tensors["train_features"].shape == (27, dim) and tensors["val_features"].shape == (3, dim)
        assert tensors["val_labels"].tolist() == [0, 1, 2]
        val = torch.cat(list(chunks(splits.val.images, 64)))  # the evaluation views (12-px photos, 8-px model)
        expected = direct(lambda x: net.head(net.encoder(x))[layer], val)
        torch.testing.assert_close(tensors["val_features"], expected, atol=1e-5, rtol=1e-5)
        with safe_open(str(out), framework="pt") as f:
            assert json.loads(f.metadata()["classes"]) == ["cat", "dog", "frog"]


def test_embed_classifier_and_unlabeled_folder(ckpts, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (write_image_folder(tmp_path / "tree", per_class=2)).rglob("*.png"):
        f.rename(flat / f"{f.parent.name}_{f.name}")
    out = tmp_path / "clf.safetensors"
    code, _, _ = run_cli(capsys, "embed", "--checkpoint", ckpts["classifier"], "--data", flat, "--device", "cpu",
                         "--out", out)
    assert code == 0
    tensors = load_file(str(out))
    assert set(tensors) == {"features", "labels"}  # one split: unprefixed
    assert tensors["features"].shape == (3, FEATURE_DIM)
    assert tensors["labels"].tolist() == [-1, -1, -1]
    images, errors = datasets.decode_images(datasets.list_images(flat), 8)  # evaluation views
    assert errors == [None] * 3
    torch.testing.assert_close(tensors["features"], direct(ckpts["classifier_net"].forward_features, images),
                               atol=1e-5, rtol=1e-5)


def test_embed_split_selection(ckpts, tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs", per_class=10, size=12)
    out = tmp_path / "val.safetensors"
    code, _, _ = run_cli(capsys, "embed", "--checkpoint", ckpts["pretrain"], "--data", root, "--splits", "val",
                         "--out", out)
    assert code == 0
    tensors = load_file(str(out))
    assert set(tensors) == {"features", "labels"} and tensors["labels"].tolist() == [0, 1, 2]
    code, _, err = run_cli(capsys, "embed", "--checkpoint", ckpts["pretrain"], "--data", root, "--splits", "test",
                           "--out", tmp_path / "x.safetensors")
    assert code == 2 and "unknown split(s) test" in err


@pytest.mark.parametrize("kind, layer, message", [("pretrain", 3, "has 2 layer"),
                                                  ("classifier", 1, "applies to pretrain")])
def test_embed_rejects_bad_layer(ckpts, tmp_path, capsys, kind, layer, message):
    out = tmp_path / "x.safetensors"
    code, _, err = run_cli(capsys, "embed", "--checkpoint", ckpts[kind], "--layer", layer, "--out", out)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


# ---------------------------------------------------------------------------- predict


def test_predict_table_csv_and_probabilities(ckpts, tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs", per_class=2, size=12)
    single = root / "cat" / "0001.png"
    out_csv = tmp_path / "pred.csv"
    code, stdout, _ = run_cli(capsys, "predict", "--checkpoint", ckpts["classifier"], root / "dog", single,
                              "--top", 3, "--csv", out_csv, "--device", "cpu")
    assert code == 0
    assert stdout.splitlines()[0].split() == ["image", "rank", "class", "probability"]
    files = datasets.list_images(root / "dog") + [single]
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["path"] for r in rows] == [str(f) for f in files for _ in range(3)]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3] * len(files)
    images, _ = datasets.decode_images(files, 8)
    probs = direct(ckpts["classifier_net"], images).softmax(1)
    for i, f in enumerate(files):
        mine = rows[3 * i: 3 * i + 3]
        p = [float(r["probability"]) for r in mine]
        assert p == sorted(p, reverse=True)
        top = probs[i].topk(3)
        assert [r["class"] for r in mine] == [DIGITS[c] for c in top.indices.tolist()]
        np.testing.assert_allclose(p, top.values.numpy(), atol=1e-5)
        assert str(f) in stdout

    preds, bad = predict_files(ckpts["classifier_net"], DIGITS, 8, files, top=10)
    assert not bad and len(preds) == len(files)
    for pred in preds:
        assert sorted(pred.classes) == DIGITS
        assert sum(pred.probabilities) == pytest.approx(1.0, abs=1e-5)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    few, bad = predict_files(ckpts["classifier_net"], DIGITS, 8, files[:2] + [broken] + files[2:], top=10,
                             batch_size=2)  # files read two at a time, the unreadable one in the middle
    assert len(bad) == 1 and "broken.png" in bad[0]
    assert [p.path for p in few] == [p.path for p in preds]
    for a, b in zip(few, preds):
        assert a.classes == b.classes and np.allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_predict_bad_inputs(ckpts, tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs", classes=("a",), per_class=2, size=12)
    broken = root / "a" / "broken.png"
    broken.write_bytes(b"not an image")

    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpts["pretrain"], root)
    assert code == 2 and "not a classifier" in err

    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpts["classifier"], root / "nope.png", root)
    assert code == 2 and "nope.png" in err

    out_csv = tmp_path / "p.csv"
    code, stdout, err = run_cli(capsys, "predict", "--checkpoint", ckpts["classifier"], root, "--top", 2,
                                "--csv", out_csv)
    assert code == 0 and "broken.png" in err and "broken.png" not in stdout
    assert len(list(csv.DictReader(out_csv.open()))) == 2 * 2

    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpts["classifier"], broken)
    assert code == 2 and "none of the 1 image" in err

    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpts["classifier"], root, "--top", 0)
    assert code == 2 and "--top" in err


# ---------------------------------------------------------------------------- export


def _run_exported(fmt: str, path: Path, x: torch.Tensor) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        return session.run(["logits"], {"images": x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in recent torch
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(x).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(ckpts, tmp_path, capsys, fmt):
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    code, stdout, _ = run_cli(capsys, "export", "--checkpoint", ckpts["classifier"], "--format", fmt, "--out", out)
    assert code == 0 and out.is_file()
    info = json.loads(out.with_name(out.name + ".json").read_text())
    assert info["classes"] == DIGITS and info["format"] == fmt
    assert info["preprocessing"]["image_size"] == 8 and info["preprocessing"]["range"] == [0.0, 1.0]
    assert info["preprocessing"]["color"] == "RGB" and info["preprocessing"]["normalization"] is None
    net = ckpts["classifier_net"]
    g = torch.Generator().manual_seed(0)
    for batch in (1, 5):
        x = torch.rand(batch, 3, 8, 8, generator=g)
        with torch.no_grad():
            expected = net(x).numpy()
        got = _run_exported(fmt, out, x)
        assert got.shape == (batch, 10) and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-4


def test_export_rejects_pretrain_checkpoint(ckpts, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(capsys, "export", "--checkpoint", ckpts["pretrain"], "--format", "onnx", "--out", out)
    assert code == 2 and "not a classifier" in err and not out.exists()
