"""benchmarks/peers.py's own parts (the full run trains two ResNet-18s and is not a unit test): the
subset both sides read, the process-tree measurements, the ratios of the summary."""

import argparse
import importlib.util
import os
from pathlib import Path

from conftest import write_image_folder

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _peers():
    spec = importlib.util.spec_from_file_location("peers", BENCHMARKS / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_and_validation_subsets_are_disjoint_and_per_class(tmp_path):
    peers = _peers()
    data = write_image_folder(tmp_path / "photos", per_class=6)
    root = peers.subset_folder(data, tmp_path / "work", train_per_class=3, val_per_class=2)
    for c in ("cat", "dog", "frog"):
        train = sorted(p.name for p in (root / "train" / c).iterdir())
        val = sorted(p.name for p in (root / "val" / c).iterdir())
        assert train == ["0000.jpg", "0001.png", "0002.jpg"] and val == ["0004.jpg", "0005.png"]
        assert (root / "train" / c / train[0]).resolve() == (data / c / train[0]).resolve()


def test_this_process_is_measured():
    peers = _peers()
    assert os.getpid() in peers.tree(os.getpid())
    assert peers.cpu_seconds(os.getpid()) > 0
    rss, pss = peers.memory(os.getpid())
    assert 0 < rss < 1000 and 0 < pss


def test_summary_ratios():
    peers = _peers()

    def run(name, side, rate, launch, rss, seed, knn, **extra):
        return {"name": name, "side": side, "seed": seed, "images_per_s": rate, "images_per_cpu_s": rate / 2,
                "launch_to_first_step_s": launch, "peak_rss_main_gib": rss, "peak_pss_tree_gib": rss,
                "knn_top1": knn, **extra}

    runs = [run("ours", "ours", 40.0, 12.0, 2.0, 0, 30.0, ceiling={"images_per_s": 50.0}),
            run("lightly (2 workers)", "lightly", 30.0, 10.0, 1.0, 0, 25.0),
            run("lightly (0 workers)", "lightly", 20.0, 8.0, 1.0, 0, 25.0)]
    result = peers.summarise(runs, argparse.Namespace(batch_size=256), 100.0, 460.0)
    ours = result["summary"]["ours"]
    assert ours["over_best_lightly_images_per_s"] == 40 / 30 and ours["over_ceiling"] == 40 / 50
    assert ours["launch_over_fastest_lightly"] == 12 / 8 and ours["peak_rss_main_over_lightly"] == 2.0
    assert ours["gflops_achieved"] == 460 * 40 / 256
    assert "| ours | 40.0 |" in peers.markdown(result)
