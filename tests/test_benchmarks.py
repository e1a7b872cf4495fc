"""The benchmark scripts run (tiny settings, seconds) and their configurations are valid."""

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_cifar_scales_are_valid_configs(scale, tmp_path):
    cifar = _module("cifar10_semisup")
    cfg = cifar.config_for(scale, str(tmp_path), torchvision=False, download=False, overrides=["pretrain.epochs=3"])
    assert cfg.label_fractions == [0.01, 0.1] and cfg.pretrain.epochs == 3
    assert cfg.aug.color_strength == 0.5 and cfg.model.cifar_stem and cfg.model.model == "resnet18"
    assert cifar.config_for(scale, str(tmp_path), False, False, [], model="resnet50").model.model == "resnet50"


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_imagenette_scales_are_valid_configs(scale, tmp_path):
    semisup = _module("semisup")
    cfg = semisup.config_for(scale, str(tmp_path), False, False, [], dataset="imagenette")
    assert cfg.data.dataset == "folder" and cfg.data.crop == "full" and not cfg.model.cifar_stem
    assert cfg.data.image_size == {"cpu": 64, "gpu": 128}[scale] and cfg.label_fractions == [0.01, 0.1]
    if scale == "gpu":
        assert cfg.model.width == 1.0 and cfg.pretrain.batch_size == 256
    old = semisup.config_for(scale, str(tmp_path), False, False, ["pretrain.epochs=1"], dataset="imagenette",
                             crop="square")
    assert old.data.crop == "square" and old.pretrain.epochs == 1


def test_semisup_runs_end_to_end_on_photos(tmp_path, monkeypatch):
    """The Imagenette benchmark's command line on a tiny folder of photos of different sizes."""
    import json
    import sys

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "nette" / "train"
    for c in ("n1", "n2"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            h, w = [(20, 30), (30, 18), (24, 24)][i % 3]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    semisup = _module("semisup")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["semisup.py", "--dataset", "imagenette", "--data", str(tmp_path / "nette"),
                                      "--scale", "cpu", "--out", str(out), "image_size=16", "width=0.125",
                                      "pretrain.epochs=1", "pretrain.batch_size=8", "finetune.epochs=1",
                                      "supervised.epochs=1", "distill.epochs=1", "distill.batch_size=8",
                                      "knn_every=1", "knn_k=3", "workers=0", "device=cpu", "val_fraction=0.2"])
    semisup.main()
    result = json.loads((out / "benchmark.json").read_text())
    assert result["benchmark"]["dataset"] == "imagenette" and result["benchmark"]["crop"] == "full"
    assert {r["stage"] for r in result["rows"]} >= {"finetune", "distill", "supervised"}


def test_throughput_measures_every_path(image_folder):
    throughput = _module("throughput")
    args = argparse.Namespace(device="cpu", data=str(image_folder), num_images=24, image_size=16, model="resnet18",
                              width=0.125, batch_size=8, strength=0.5, min_scale=0.08, workers=1, steps=2,
                              warmup=1, compile=False, no_amp=False, decode="workers")
    r = throughput.measure(args)
    for key in ("conventional", "ours", "ceiling", "aug_conventional", "aug_ours", "stream", "aug_stream",
                "aug_conventional_files"):
        assert r[key] > 0, key
    assert r["device"].startswith("cpu") and r["batch_size"] == 8


def test_quickstart_seeds_writes_ranges(tmp_path, monkeypatch, capsys):
    """One seed of a tiny Quickstart: the JSON holds every cell, the table has one row per label fraction."""
    import json
    import os

    seeds = _module("quickstart_seeds")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("SIMCLRV2_TENSORBOARD", "0")
    monkeypatch.setenv("PYTHONPATH", str(BENCHMARKS.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    tiny = ["image_size=8", "width=0.125", "head_layers=2", "device=cpu", "pretrain.epochs=1", "knn_every=0",
            "finetune.epochs=1", "supervised.epochs=1", "distill.epochs=1", "label_fractions=0.05,0.2"]
    summary = seeds.main(["--seeds", "3", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "s.json"),
                          "--markdown", str(tmp_path / "s.md"), *tiny])
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["seeds"] == [3] and "seed=3" in saved["runs"][0]["command"]
    rows = saved["runs"][0]["rows"]
    for labels in ("0.05", "0.2"):
        for stage in ("supervised", "knn", "linear", "finetune", "distill"):
            top1 = next(r["top1"] for r in rows if r["stage"] == stage and f"{r['labels']:g}" == labels)
            assert saved["cells"][labels][stage] == {"min": top1, "max": top1, "mean": top1, "n": 1}
    table = (tmp_path / "s.md").read_text().splitlines()
    assert table[0].startswith("| labels | labeled images | supervised | kNN | linear | fine-tune | distill")
    assert table[2].startswith("| 5% | ") and table[3].startswith("| 20% | ") and summary["cells"] == saved["cells"]
    knn = saved["cells"]["0.2"]["knn"]["mean"]
    assert f"| {knn:.1f} ({knn:.1f}) |" in table[3]  # a single seed: min = max, then the mean
    capsys.readouterr()
    seeds.main(["--render", str(tmp_path / "s.json")])
    assert capsys.readouterr().out == (tmp_path / "s.md").read_text()
    two = seeds.ranges([{"rows": [{"labels": 0.1, "stage": "knn", "top1": t, "labeled_images": 143}]} for t in (70, 74)])
    assert two["0.1"]["knn"] == {"min": 70, "max": 74, "mean": 72, "n": 2}
    assert seeds._span(two["0.1"]["knn"]) == "70.0–74.0"


def test_subset_archive_keeps_the_first_files_of_each_class(tmp_path):
    import io
    import tarfile

    source = tmp_path / "photos.tar.gz"
    with tarfile.open(source, "w:gz") as tar:
        for c in ("b_class", "a_class"):
            for name in ("3.jpg", "1.jpg", "2.jpg"):
                data = f"{c}/{name}".encode()
                info = tarfile.TarInfo(f"set/train/{c}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    target = tmp_path / "subset.tar.gz"
    assert _module("subset_archive").main([str(source), str(target), "--per-class", "2"]) == 0
    with tarfile.open(target) as tar:
        kept = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    assert kept == {f"set/train/{c}/{n}": f"{c}/{n}" for c in ("a_class", "b_class") for n in ("1.jpg", "2.jpg")}


def test_gpu_session_limits_fit_one_device_call():
    """The step limits of gpu_session.sh add up to under the device's 600-s command limit."""
    import re

    script = (BENCHMARKS / "gpu_session.sh").read_text()
    defaults = dict(re.findall(r"(\w+)=\$\{\w+:-(\d+)\}", script)) | dict(re.findall(r"\$\{(\w+):-(\d+)\}", script))
    tests = sum(int(t) for t in re.findall(r"timeout (\d+) ", script))
    throughput_runs = script.count('timeout "$throughput_seconds"')
    total = (tests + throughput_runs * int(defaults["throughput_seconds"]) + int(defaults["cifar_seconds"])
             + int(defaults["nette_seconds"]) + int(defaults["PEERS_SECONDS"]))
    assert total <= 540, total  # 60 s left for unpacking the archives and starting Python
