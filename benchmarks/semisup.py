"""Semi-supervised benchmark on CIFAR-10 or Imagenette: accuracy per label budget and wall time per stage.

One pretraining on all training images without labels, then for 1% and 10% labels: fine-tune,
self-distill, the supervised baseline on the same labels, and kNN / linear evaluation of the frozen
pretrained encoder. Prints and writes a table (stage x label fraction -> top-1, top-5, seconds).

    # CIFAR-10: the shared JPEG copy of its training split (validation = files 4500-4999 per class)
    python benchmarks/semisup.py --dataset cifar10 --data ../shared/data/cifar10-train-jpeg.tar.gz --scale cpu
    # users: torchvision's CIFAR-10 (train / test), downloaded once
    python benchmarks/semisup.py --dataset cifar10 --data ~/data/cifar10 --torchvision --download --scale gpu
    # Imagenette (160 px release, train split; validation = the last 10% of each class's files)
    python benchmarks/semisup.py --dataset imagenette --data ../shared/data/imagenette2-160-train.tar.gz --scale cpu
    # the same with the old data path: training crops from the centre square only
    python benchmarks/semisup.py --dataset imagenette --data ... --scale cpu --crop square
    # a ResNet-50 instead of the ResNet-18; any config key can follow as key=value
    python benchmarks/semisup.py --dataset cifar10 --data DIR --scale gpu --model resnet50 pretrain.epochs=100

``--data`` may be an ImageFolder tree or the ``.tar.gz`` of one (extracted next to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import tarfile
import time
from pathlib import Path

import torch

from simclrv2 import pipeline
from simclrv2.config import Config, merge, parse_overrides, preset

# CIFAR-10, two budgets. ``cpu``: about half an hour on 2 cores (images downsampled to 16 px, a
# quarter-width ResNet-18). ``gpu``: the full-resolution recipe for one H100/H200 in about 10 minutes.
CIFAR10: dict[str, dict] = {
    "cpu": {
        "data": {"image_size": 16},
        "model": {"model": "resnet18", "width": 0.25, "cifar_stem": True},
        "aug": {"color_strength": 0.5, "blur": False, "min_scale": 0.2},
        "pretrain": {"epochs": 15, "batch_size": 256, "lr": 1.0, "lr_scaling": "linear", "warmup_epochs": 1,
                     "temperature": 0.5, "knn_every": 3, "knn_k": 200},
        # SGD, not LARS: with this short schedule LARS's trust ratio keeps the weak encoder nearly frozen
        "finetune": {"epochs": 40, "batch_size": 64, "lr": 0.4, "lr_scaling": "linear", "optimizer": "sgd",
                     "weight_decay": 5e-4},
        "supervised": {"epochs": 40, "batch_size": 64, "lr": 0.4, "lr_scaling": "linear"},
        "distill": {"epochs": 10, "batch_size": 256, "lr": 1.0, "lr_scaling": "linear", "warmup_epochs": 0.5},
    },
    "gpu": {
        "data": {"image_size": 32},
        "model": {"model": "resnet18", "width": 1.0, "cifar_stem": True},
        "aug": {"color_strength": 0.5, "blur": False, "min_scale": 0.08},
        "compile": True,
        "pretrain": {"epochs": 200, "batch_size": 512, "lr": 1.0, "lr_scaling": "linear", "warmup_epochs": 10,
                     "temperature": 0.5, "knn_every": 20, "knn_k": 200},
        # the fine-tuning that won on the CPU scale's validation split (SGD over LARS); not yet tuned on a GPU
        "finetune": {"epochs": 60, "batch_size": 64, "lr": 0.4, "lr_scaling": "linear", "optimizer": "sgd",
                     "weight_decay": 5e-4},
        "supervised": {"epochs": 60, "batch_size": 64, "lr": 0.4, "lr_scaling": "linear"},
        "distill": {"epochs": 30, "batch_size": 512, "lr": 1.0, "lr_scaling": "linear", "warmup_epochs": 2},
    },
}

# Imagenette (photos: short side 160 px, long side up to 802), ImageNet stem, full colour distortion.
# ``cpu``: 64-px views and a quarter-width ResNet-18, one run in about 10 minutes on 2 idle cores.
# ``gpu``: 128-px views, ResNet-18, batch 256 -- lightly's Imagenette benchmark (kNN 88.9% after 800
# epochs in 194 min on an RTX A6000).
IMAGENETTE: dict[str, dict] = {
    "cpu": {
        "data": {"image_size": 64},
        "model": {"model": "resnet18", "width": 0.25, "cifar_stem": False},
        "aug": {"color_strength": 1.0, "blur": False, "min_scale": 0.08},
        "pretrain": {"epochs": 10, "batch_size": 256, "lr": 1.0, "lr_scaling": "linear", "warmup_epochs": 1,
                     "temperature": 0.2, "knn_every": 5, "knn_k": 50},
        "finetune": {"epochs": 20, "batch_size": 64, "lr": 0.4, "lr_scaling": "linear", "optimizer": "sgd",
                     "weight_decay": 5e-4},
        "supervised": {"epochs": 20, "batch_size": 64, "lr": 0.4, "lr_scaling": "linear"},
        "distill": {"epochs": 2, "batch_size": 256, "lr": 1.0, "lr_scaling": "linear", "warmup_epochs": 0.2},
    },
    "gpu": {
        "data": {"image_size": 128},
        "model": {"model": "resnet18", "width": 1.0, "cifar_stem": False},
        "aug": {"color_strength": 1.0, "blur": True, "min_scale": 0.08},
        "compile": True,
        "pretrain": {"epochs": 800, "batch_size": 256, "lr": 1.0, "lr_scaling": "linear", "warmup_epochs": 10,
                     "temperature": 0.1, "knn_every": 50, "knn_k": 200},
        "finetune": {"epochs": 60, "batch_size": 64, "lr": 0.4, "lr_scaling": "linear", "optimizer": "sgd",
                     "weight_decay": 5e-4},
        "supervised": {"epochs": 60, "batch_size": 64, "lr": 0.4, "lr_scaling": "linear"},
        "distill": {"epochs": 30, "batch_size": 256, "lr": 1.0, "lr_scaling": "linear", "warmup_epochs": 2},
    },
}

SCALES = {"cifar10": CIFAR10, "imagenette": IMAGENETTE}


def config_for(scale: str, data: str, torchvision: bool, download: bool, overrides: list[str],
               model: str = "resnet18", dataset: str = "cifar10", crop: str = "full") -> Config:
    cfg = merge(preset("cifar10"), SCALES[dataset][scale])
    cfg = merge(cfg, {"model": {"model": model}})
    source = {"dataset": "cifar10", "path": data, "download": download} if torchvision else \
        {"dataset": "folder", "path": data, "val_fraction": 0.1, "crop": crop}
    cfg = merge(cfg, {"data": source, "label_fractions": [0.01, 0.1]})
    return merge(cfg, parse_overrides(overrides, "pipeline")).validate()


def extract(archive: Path, into: Path) -> Path:
    """Unpack an ImageFolder archive once; return the folder that holds ``train/`` or the classes."""
    marker = into / ".extracted"
    if not marker.exists():
        into.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
        marker.write_text(str(archive))
    roots = [p.parent for p in into.rglob("train") if p.is_dir()]
    return roots[0] if roots else into


def main(default_dataset: str | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(SCALES), default=default_dataset, required=default_dataset is None)
    ap.add_argument("--data", required=True, help="ImageFolder tree, its .tar.gz, or a torchvision root")
    ap.add_argument("--torchvision", action="store_true", help="--data is a torchvision CIFAR-10 root")
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--scale", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--model", choices=("resnet18", "resnet50"), default="resnet18",
                    help="encoder (the scale's width, stem and epochs are kept)")
    ap.add_argument("--crop", choices=("full", "square"), default="full",
                    help="training crops from the whole photo, or from its centre square (the old data path)")
    ap.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<scale>[-square])")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args()
    out = Path(args.out or f"runs/{args.dataset}-{args.scale}{'-square' if args.crop == 'square' else ''}")
    data = args.data
    if data.endswith((".tar.gz", ".tgz", ".tar")):
        data = str(extract(Path(data), out / "data"))
    cfg = config_for(args.scale, data, args.torchvision, args.download, args.overrides, args.model, args.dataset,
                     args.crop)
    start = time.time()
    results = pipeline.run(cfg, out)
    results["benchmark"] = {"dataset": args.dataset, "scale": args.scale, "crop": cfg.data.crop,
                            "wall_seconds": time.time() - start,
                            "epochs": {s: getattr(cfg, s).epochs for s in ("pretrain", "finetune", "distill", "supervised")},
                            "threads": torch.get_num_threads()}
    print(pipeline.results_table(results["rows"]))
    print(f"device {results['device']}, torch {results['torch']}, total {results['benchmark']['wall_seconds']:.0f} s, "
          f"kNN (all labels) {results['pretrain']['knn_top1_all_labels']}")
    target = Path(args.json) if args.json else out / "benchmark.json"
    target.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
