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
