"""Stage 2, fine-tuning on the labeled subset, and the supervised baseline trained from scratch.

Both train a classifier with cross entropy on crop + flip views of the labeled images, evaluate on
the validation split after every epoch, and keep ``best`` (by top-1) and ``last`` checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2 import checkpoint
from simclrv2.config import Config, OptimConfig
from simclrv2.data import datasets, subsets
from simclrv2.data.feed import BatchFeed
from simclrv2.data.views import ViewMaker
from simclrv2.models.networks import arch_of, build_network, classifier_from
from simclrv2 import distributed
from simclrv2.core.runtime import Runtime, autocast, start
from simclrv2.train.summary import count_params
from simclrv2.core.metrics import evaluate_classifier
from simclrv2.train.stepper import make_stepper
from simclrv2.train.batching import steps_per_epoch
from simclrv2.train import summary
from simclrv2.train.loop import Stage, fit
from simclrv2.train.rundir import RunDir, open_run


def select_labeled(cfg: Config, train: datasets.ImageSet) -> Tensor:
    """Indices of the labeled training images, as the config asks (file, count per class, or fraction)."""
    if cfg.labels_file:
        chosen = subsets.from_file(train.names, cfg.labels_file)
    elif cfg.labels_per_class is not None:
        chosen = subsets.by_count(train.labels, cfg.labels_per_class, cfg.seed)
    else:
        chosen = subsets.by_fraction(train.labels, cfg.labels if cfg.labels is not None else 1.0, cfg.seed)
    subsets.check_covers_classes(train.labels, chosen, train.classes)
    subsets.check_listable(train.names, chosen)
    return chosen


def labeled_how(cfg: Config) -> str:
    """How the labeled subset was chosen, in words."""
    if cfg.labels_file:
        return f"listed in {cfg.labels_file}"
    if cfg.labels_per_class is not None:
        return f"{cfg.labels_per_class} per class, seed {cfg.seed}"
    return f"{100 * (cfg.labels if cfg.labels is not None else 1.0):g}% per class, seed {cfg.seed}"


def labeled_subset(cfg: Config, splits: datasets.Splits) -> tuple[datasets.ImageSet, Tensor]:
    """The labeled images (and their indices), as the config chooses them."""
    if not splits.classes:
        raise datasets.DataError("the data has no class labels: fine-tuning needs an ImageFolder with class folders")
    chosen = select_labeled(cfg, splits.train)
    return splits.train.subset(chosen), chosen


def _start_run(run_dir: RunDir, names: list[str], chosen: Tensor) -> None:
    """Make the directory this run's, and record the labeled names in ``labeled.txt`` for exact repeats."""
    run_dir.commit()
    if run_dir.is_main:
        subsets.save_list(names, chosen, run_dir.path / "labeled.txt")


def train_classifier(model: nn.Module, net: nn.Module, labeled: datasets.ImageSet, val: datasets.ImageSet | None,
                     section: OptimConfig, cfg: Config, out: Path, stage_name: str, meta: dict[str, Any],
                     rt: Runtime, resume: bool = False, show_progress: bool = True,
                     before_fit: Callable[[], None] | None = None,
                     splits: datasets.Splits | None = None,
                     views: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
    """Cross-entropy training of ``model`` (``net`` unwrapped) on ``labeled``; best/last checkpoints.
    ``before_fit`` runs once everything is set up and checked (the checkpoint to resume included),
    just before the first step. ``views`` replaces the crop + flip augmentation (uint8 batch -> float
    view; the official-step tests feed fixed ones)."""
    device = rt.device
    images = BatchFeed(labeled.images, device, cfg.data.on_device, cfg.workers, cfg.data.decode)
    labels = labeled.labels.to(device)
    n = len(labeled)
    if n < 2:  # BatchNorm needs two images in a batch
        raise datasets.DataError(f"{stage_name} needs at least 2 labeled images, the labeled subset has {n} "
                                 f"({labeled_how(cfg)}): label more images (labels=, labels_per_class=)")
    batch = rt.global_batch(section.batch_size, n)
    stepper = make_stepper(model, section, steps_per_epoch(n, batch, drop_last=False), batch, device,
                           num_items=n)
    views = views or ViewMaker.for_finetuning(cfg, device, seed=rt.rank_seed(2))
    summary.show(stage_name, cfg, splits, meta["arch"], count_params(net), device, rt.world.size, out, section, batch,
                 stepper.peak_lr, steps_per_epoch(n, batch, False), is_main=rt.world.is_main, enabled=show_progress,
                 labeled=f"{n:,} images ({labeled_how(cfg)})", start=meta.get("pretrained", "random initialisation"))
    generators = {"augment": views.generator} if isinstance(views, ViewMaker) else {}
    stage = Stage(stage_name, out, net, stepper, meta, n, batch, section.epochs, drop_last=False, order=rt.order,
                  generators=generators, is_main=rt.world.is_main,
                  shard=distributed.shard(rt.world), feeds=[images])

    def loss_of(idx: Tensor) -> Tensor:
        with autocast(device, cfg.amp):
            logits = model(views(images(idx)))
        return F.cross_entropy(logits.float(), labels[idx.to(labels.device)])

    def evaluate(epoch: int) -> dict[str, float]:
        if val is None or not len(val):
            return {}
        metrics = evaluate_classifier(net, val.images, val.labels, device, cfg.amp,
                                      warn_as=stage_name if epoch == section.epochs and rt.world.is_main else None)
        return {f"val_{k}": v for k, v in metrics.items()}

    result = fit(stage, loss_of, evaluate, resume=resume, show_progress=show_progress, commit=before_fit)
    return {**result, "checkpoint": str(out / "best"), "params": count_params(net)}


def _setup(cfg: Config, out_dir: str | Path, splits: datasets.Splits | None, overwrite: bool, resume: bool,
           stage: str):
    rt = start(cfg)
    run_dir = open_run(out_dir, cfg, stage, overwrite, resume, rt.world.is_main)
    splits = splits or datasets.load(cfg.data, cfg.workers)
    return run_dir, rt, splits


def run_finetune(cfg: Config, out_dir: str | Path, pretrained: str | Path, splits: datasets.Splits | None = None,
                 show_progress: bool = True, resume: bool = False, overwrite: bool = False,
                 views: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
    """Fine-tune a pretrained encoder + first ``model.ft_layer`` head layers with a new linear classifier
    (``views``: see :func:`train_classifier`)."""
    cfg = copy.deepcopy(cfg)
    tensors, source_meta = checkpoint.load(pretrained)
    if source_meta.get("kind") != "pretrain":
        raise checkpoint.CheckpointError(f"{pretrained} is a {source_meta.get('kind')!r} checkpoint; "
                                         f"fine-tuning starts from a pretrain checkpoint")
    arch = dict(source_meta["arch"])
    for key in ("model", "width", "sk_ratio", "cifar_stem", "head_layers", "head_dim", "proj_dim"):
        setattr(cfg.model, key, arch[key])  # the checkpoint decides the architecture
    if cfg.labels_file is None and cfg.labels_per_class is None:
        cfg.finetune.epochs = cfg.finetune.epochs_for(cfg.labels)  # per label fraction, as the paper
    cfg.validate()
    run_dir, rt, splits = _setup(cfg, out_dir, splits, overwrite, resume, "finetune")
    labeled, chosen = labeled_subset(cfg, splits)
    if cfg.labels_file:  # the share of the training images the list holds, within 10%: the official 10% list
        cfg.finetune.epochs = cfg.finetune.epochs_for(len(chosen) / len(splits.train), rel_tol=0.1)
    pretrained_net = build_network(arch)
    checkpoint.load_weights(pretrained_net, tensors, source=f"pretrained checkpoint {pretrained}")
    net = classifier_from(pretrained_net, cfg.model.ft_layer, len(splits.classes))
    model = rt.wrap(net, cfg.compile, cfg.amp)
    meta = {"stage": "finetune", "kind": "classifier", "config": cfg.to_dict(), "classes": splits.classes,
            "arch": arch_of(cfg.model, len(splits.classes), cfg.model.ft_layer), "image_size": cfg.data.image_size,
            "pretrained": str(pretrained), "labeled": len(labeled), "params": count_params(net)}
    return train_classifier(model, net, labeled, splits.val, cfg.finetune, cfg, run_dir.path, "finetune", meta, rt,
                            run_dir.resume, show_progress, lambda: _start_run(run_dir, splits.train.names, chosen),
                            splits, views)


def run_supervised(cfg: Config, out_dir: str | Path, splits: datasets.Splits | None = None,
                   show_progress: bool = True, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """The baseline: the same encoder (+ linear classifier) from random init on the labeled subset only."""
    cfg = copy.deepcopy(cfg)
    run_dir, rt, splits = _setup(cfg, out_dir, splits, overwrite, resume, "supervised")
    labeled, chosen = labeled_subset(cfg, splits)
    arch = arch_of(cfg.model, len(splits.classes), 0)
    net = build_network(arch)
    model = rt.wrap(net, cfg.compile, cfg.amp)
    meta = {"stage": "supervised", "kind": "classifier", "config": cfg.to_dict(), "classes": splits.classes,
            "arch": arch, "image_size": cfg.data.image_size, "labeled": len(labeled), "params": count_params(net)}
    return train_classifier(model, net, labeled, splits.val, cfg.supervised, cfg, run_dir.path, "supervised", meta,
                            rt, run_dir.resume, show_progress, lambda: _start_run(run_dir, splits.train.names, chosen),
                            splits)


def load_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier checkpoint (fine-tuned, distilled or supervised) as a network in eval mode."""
    tensors, meta = checkpoint.load(path)
    if meta.get("kind") != "classifier":
        raise checkpoint.CheckpointError(f"{path} is a {meta.get('kind')!r} checkpoint, not a classifier")
    net = build_network(meta["arch"])
    checkpoint.load_weights(net, tensors, source=f"checkpoint {path}")
    return net.eval(), meta
