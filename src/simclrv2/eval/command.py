"""The ``evaluate`` subcommand: top-1/top-5 of a classifier, or kNN and linear evaluation of a
pretrained encoder, on the checkpoint's data or on a labeled folder of your own.

A classifier's outputs are matched to the folder's classes **by name** (a folder may hold any subset
of the checkpoint's classes, in any order); a folder with classes the checkpoint does not know is
refused unless ``--allow-unknown-classes``, which leaves those images out. The checkpoint's own data
is scored on its validation split; other data as a whole (``--split`` chooses).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from simclrv2 import checkpoint
from simclrv2.config import Config, DataConfig, from_dict
from simclrv2.data import datasets
from simclrv2.data.errors import DataError
from simclrv2.errors import NonFiniteError
from simclrv2.train import summary

SPLITS = ("auto", "val", "train", "all")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``evaluate`` beyond the shared ones."""
    p.add_argument("--checkpoint", required=True, help="pretrain or classifier checkpoint, e.g. RUN_DIR/best")
    p.add_argument("--split", choices=SPLITS, default="auto",
                   help="images scored: val, train or all of the data (auto: the validation split of the "
                        "checkpoint's own data, every image of other data)")
    p.add_argument("--allow-unknown-classes", action="store_true",
                   help="score a folder holding classes the classifier does not know, leaving those images out")


def is_other_data(saved: DataConfig, current: DataConfig) -> bool:
    """Whether ``current`` points at other data than the checkpoint was trained on."""
    def where(d: DataConfig) -> Path | None:
        return Path(d.path).expanduser().resolve() if d.path else None

    return saved.dataset != current.dataset or where(saved) != where(current)


def class_index(data_classes: list[str], model_classes: list[str]) -> tuple[Tensor, list[str]]:
    """For each data class, its index among the model's classes (-1: unknown); and the unknown names."""
    position = {name: i for i, name in enumerate(model_classes)}
    index = torch.tensor([position.get(name, -1) for name in data_classes], dtype=torch.long)
    return index, [name for name in data_classes if name not in position]


def select(splits: datasets.Splits, split: str) -> list[datasets.ImageSet]:
    """The labeled images of ``split``: ``val``, ``train`` or ``all`` (both), as one part per split.

    The parts are scored one after the other, never joined: a training split streamed from disk and a
    validation split decoded into memory (``data.stream=auto`` with only the training tree over
    ``data.memory_gb``, as ImageNet) are stored differently.
    """
    if split == "train" or (split == "all" and splits.val is None):
        return [splits.train]
    if split == "val":
        if splits.val is None or not len(splits.val):
            raise DataError("the data has no validation split (with a few images per class, data.val_fraction "
                            "rounds to none): use --split train or all, or a larger data.val_fraction")
        return [splits.val]
    return [splits.train, splits.val] if len(splits.val) else [splits.train]


def run(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """Evaluate ``args.checkpoint`` on the data of ``cfg``; print and (with ``--out``) save the results."""
    from simclrv2.core.knn import knn_predict
    from simclrv2.eval.linear import describe, linear_probe
    from simclrv2.models.networks import build_network
    from simclrv2.train.summary import count_params
    from simclrv2.core.metrics import topk_accuracy, warn_if_degenerate
    from simclrv2.core.batched import infer
    from simclrv2.core.runtime import resolve_device
    from simclrv2.core.runtime import configure_threads

    tensors, meta = checkpoint.load(args.checkpoint)
    net = build_network(meta["arch"])
    checkpoint.load_weights(net, tensors, source=args.checkpoint)
    configure_threads(cfg.threads)
    device = resolve_device(cfg.device)
    other = is_other_data(from_dict(meta["config"]).data, cfg.data)
    splits = datasets.load(cfg.data, cfg.workers)
    if not splits.classes:
        raise DataError("evaluation needs labeled data: a folder with one sub-folder per class")
    classifier = meta["kind"] == "classifier"
    split = args.split if args.split != "auto" else ("all" if other and classifier else "val")
    results: dict[str, Any] = {"checkpoint": args.checkpoint, "kind": meta["kind"], "split": split,
                               "other_data": other}
    if classifier:
        parts = select(splits, split)
        index, unknown = class_index(splits.classes, meta["classes"])
        if unknown and not args.allow_unknown_classes:
            raise DataError(f"the data has {len(unknown)} class(es) the checkpoint does not know: "
                            f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''} (its classes: "
                            f"{', '.join(meta['classes'][:10])}{', ...' if len(meta['classes']) > 10 else ''}); "
                            f"pass --allow-unknown-classes to score the other images")
        labels = [index[part.labels] for part in parts]
        keep = [(y >= 0).nonzero().flatten() for y in labels]
        kept = sum(len(k) for k in keep)
        results.update(images=kept, classes=len(splits.classes) - len(unknown),
                       skipped_unknown=sum(len(part) for part in parts) - kept, unknown_classes=unknown)
        if not kept:
            raise DataError("none of the images belongs to a class the checkpoint knows")
        summary.show("evaluate", cfg, splits, meta["arch"], count_params(net), device, 1, args.out or None,
                     checkpoint=args.checkpoint, scored=_scored(split, other, kept, results))
        net = net.to(device).eval()
        logits = torch.cat([infer(net, part.subset(k).images, device, amp=cfg.amp)
                            for part, k in zip(parts, keep) if len(k)])
        check_finite(args.checkpoint, "outputs", logits)
        kept_labels = torch.cat([y[k] for y, k in zip(labels, keep)])
        warn_if_degenerate(logits, kept_labels, "evaluate")
        results["classifier"] = topk_accuracy(logits, kept_labels)
    else:
        if split == "all":
            raise DataError("kNN and linear evaluation need the training split as labeled bank: use --split val")
        queries, = select(splits, split)
        k = min(cfg.pretrain.knn_k, len(splits.train))
        results.update(images=len(queries), classes=len(splits.classes), knn_k=k, bank=len(splits.train))
        summary.show("evaluate", cfg, splits, meta["arch"], count_params(net), device, 1, args.out or None,
                     checkpoint=args.checkpoint, scored=_scored(split, other, len(queries), results),
                     knn=f"k={k} nearest of {len(splits.train):,} training images (cosine, "
                         f"temperature {cfg.pretrain.knn_temperature:g}); linear: {describe(cfg.eval)}")
        encoder = net.encoder.to(device).eval()
        train_feats = infer(encoder.forward_features, splits.train.images, device, amp=cfg.amp)
        val_feats = infer(encoder.forward_features, queries.images, device, amp=cfg.amp)
        check_finite(args.checkpoint, "features", train_feats, val_feats)
        scores = knn_predict(train_feats, splits.train.labels, val_feats, len(splits.classes), k,
                             cfg.pretrain.knn_temperature)
        results["knn"] = topk_accuracy(scores, queries.labels)
        warn_if_degenerate(scores, queries.labels, "evaluate: kNN")
        scores = linear_probe(cfg, encoder.forward_features, splits.train.images, splits.train.labels, train_feats,
                              val_feats, len(splits.classes), device, encoder=encoder, val_images=queries.images)
        results["linear"] = {**topk_accuracy(scores, queries.labels), "protocol": cfg.eval.linear}
        warn_if_degenerate(scores, queries.labels, "evaluate: linear")
        results["linear_protocol"] = describe(cfg.eval)
    for key in ("classifier", "knn", "linear"):
        if key in results:
            title = f"linear ({results['linear_protocol']})" if key == "linear" else key
            print(summary.record_line(title, results[key]))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(out / "evaluation.json", results)
    return results


def check_finite(ckpt: str, what: str, *features: Tensor) -> None:
    """Refuse a checkpoint whose finite weights give NaN or infinite ``what`` (features, outputs): kept
    after a divergence, BatchNorm running variances below zero, weights so large that activations overflow."""
    bad = sum(int((~torch.isfinite(f)).any(dim=1).sum()) for f in features)
    if bad:
        total = sum(len(f) for f in features)
        raise NonFiniteError(f"the network of {ckpt} gives NaN or infinite {what} for {bad} of {total} images "
                             f"(its weights are finite, but e.g. BatchNorm running variances are negative or "
                             f"weights overflow: training diverged); evaluate an earlier checkpoint")


def _scored(split: str, other: bool, count: int, results: dict[str, Any]) -> str:
    what = {"val": "the validation split", "train": "the training split", "all": "every image"}[split]
    line = f"{count:,} images: {what} of {'other data than' if other else 'the data of'} the checkpoint"
    if results.get("skipped_unknown"):
        line += f" ({results['skipped_unknown']:,} images of unknown classes left out)"
    return line
