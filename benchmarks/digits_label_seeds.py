"""Why the frozen probes sometimes beat fine-tuning on the embedded digits: one pretrained encoder,
several seeds choosing the labeled images, fine-tuning (last and best epoch) against kNN and linear
probes on the same images.

    simclrv2 pipeline --out runs/digits-base          # any finished Quickstart run
    python benchmarks/digits_label_seeds.py --run runs/digits-base --seeds 0,1,2,3,4 \\
        --json benchmarks/results/digits-label-seeds.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from simclrv2 import pipeline
from simclrv2.config import merge, preset
from simclrv2.data import datasets
from simclrv2.train import classifier

VARIANTS = {
    "default": {},
    "finetune.epochs=30": {"finetune": {"epochs": 30}},
    # SGD (lr 0.4 x B/256, the supervised baseline's) instead of LARS: with eta = 0.001 and these short
    # schedules LARS barely moves the encoder
    "sgd": {"finetune": {"optimizer": "sgd", "lr": 0.4, "lr_scaling": "linear"}},
    "sgd.epochs=30": {"finetune": {"optimizer": "sgd", "lr": 0.4, "lr_scaling": "linear", "epochs": 30}},
    "finetune.lr=0.1": {"finetune": {"lr": 0.1}},
}


def measure(run: Path, seeds: list[int], fractions: list[float], variants: dict[str, dict]) -> list[dict[str, Any]]:
    cfg = preset("digits")
    splits = datasets.load(cfg.data, cfg.workers)
    pretrained = run / "pretrain" / "last"
    rows = []
    for name, extra in variants.items():
        for fraction in fractions:
            for seed in seeds:
                c = merge(cfg, {"seed": seed, "labels": fraction, **extra})
                out = run / "label_seeds" / f"{name}_{fraction:g}_seed{seed}"
                ft = classifier.run_finetune(c, out, pretrained, splits, show_progress=False)
                knn, linear = pipeline.frozen_eval(c, pretrained, splits, out / "labeled.txt")
                rows.append({"variant": name, "labels": fraction, "seed": seed, "finetune_last": ft["final"]["val_top1"],
                             "finetune_best": ft["best"]["val_top1"], "knn": knn["top1"], "linear": linear["top1"]})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def spans(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{variant labels: {metric: [min, mean, max]}}``."""
    out: dict[str, dict[str, list[float]]] = {}
    for key in sorted({(r["variant"], r["labels"]) for r in rows}):
        group = [r for r in rows if (r["variant"], r["labels"]) == key]
        out[f"{key[0]} labels={key[1]:g}"] = {
            m: [min(r[m] for r in group), statistics.fmean(r[m] for r in group), max(r[m] for r in group)]
            for m in ("finetune_last", "finetune_best", "knn", "linear")}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished `simclrv2 pipeline` directory (its pretrain/last)")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--labels", default="0.01,0.1")
    p.add_argument("--variants", default="default,finetune.epochs=30",
                   help=f"comma-separated names from: {'; '.join(VARIANTS)}")
    p.add_argument("--json", help="write rows and min/mean/max here")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    rows = measure(Path(args.run), seeds, [float(f) for f in args.labels.split(",")], {v: VARIANTS[v] for v in names})
    result = {"rows": rows, "spans": spans(rows)}
    print(json.dumps(result["spans"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
