"""Stage 1: contrastive pretraining without labels (NT-Xent on two augmented views of each image)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from simclrv2.config import Config
from simclrv2.data import datasets
from simclrv2.data.views import ViewMaker
from simclrv2.eval.knn import knn_predict
from simclrv2.losses import nt_xent
from simclrv2.models.networks import SimCLRModel, arch_of, build_pretrain_model
from simclrv2.train.common import (autocast, count_params, infer, make_stepper, open_run_dir, prepare_model,
                                   resolve_device, seed_everything, setup_backend, steps_per_epoch, topk_accuracy)
from simclrv2.train.loop import Stage, fit


def knn_accuracy(model: SimCLRModel, splits: datasets.Splits, device: torch.device, k: int, temperature: float,
                 amp: bool = True) -> dict[str, float] | None:
    """kNN top-1/top-5 (%) of the encoder's features: training split as the bank, validation as queries."""
    if splits.val is None or not splits.classes or (splits.train.labels < 0).all():
        return None
    was_training = model.training
    model.eval()
    bank = infer(model.encoder.forward_features, splits.train.images, device, amp=amp)
    queries = infer(model.encoder.forward_features, splits.val.images, device, amp=amp)
    model.train(was_training)
    scores = knn_predict(bank, splits.train.labels, queries, len(splits.classes), k, temperature)
    return topk_accuracy(scores, splits.val.labels)


def run(cfg: Config, out_dir: str | Path, splits: datasets.Splits | None = None, show_progress: bool = True,
        resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Pretrain an encoder + projection head; writes ``out_dir/last`` and ``metrics.jsonl``."""
    cfg = copy.deepcopy(cfg)
    out, found = open_run_dir(out_dir, cfg, overwrite)
    device = resolve_device(cfg.device)
    setup_backend(device)
    order = seed_everything(cfg.seed)
    splits = splits or datasets.load(cfg.data, cfg.workers)
    images = splits.pretrain_images()
    if device.type == "cuda" and cfg.data.on_device:
        images = images.to(device)
    n = images.shape[0]
    s = cfg.pretrain
    if n < 2:
        raise datasets.DataError(f"pretraining needs at least 2 images, the data has {n}")
    batch = min(s.batch_size, n)

    net = build_pretrain_model(cfg.model)
    model = prepare_model(net, device, cfg.compile)
    stepper = make_stepper(model, s, steps_per_epoch(n, batch, True), batch, device)
    views = ViewMaker.for_pretraining(cfg, device)
    meta = {"stage": "pretrain", "kind": "pretrain", "arch": arch_of(cfg.model), "config": cfg.to_dict(),
            "classes": splits.classes, "image_size": cfg.data.image_size, "params": count_params(net)}
    stage = Stage("pretrain", out, net, stepper, meta, n, batch, s.epochs, drop_last=True, order=order,
                  generators={"augment": views.generator})

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x = images[idx.to(images.device)].to(device, non_blocking=True)
        with autocast(device, cfg.amp):
            z = model(torch.cat([views(x), views(x)]))
        return nt_xent(z[: len(idx)], z[len(idx):], s.temperature)

    def evaluate(epoch: int) -> dict[str, float]:
        if not s.knn_every or (epoch % s.knn_every and epoch != s.epochs):
            return {}
        knn = knn_accuracy(net, splits, device, s.knn_k, s.knn_temperature, cfg.amp)
        return {"knn_top1": knn["top1"], "knn_top5": knn["top5"]} if knn else {}

    result = fit(stage, loss_of, evaluate, resume=resume or found, show_progress=show_progress)
    return {**result, "checkpoint": str(out / "last"), "params": count_params(net)}
