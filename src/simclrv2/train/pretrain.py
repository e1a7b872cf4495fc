"""Stage 1: contrastive pretraining without labels (NT-Xent on two augmented views of each image)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from simclrv2.config import Config
from simclrv2.data import datasets
from simclrv2.data.feed import BatchFeed
from simclrv2.data.prefetch import Prefetcher
from simclrv2.data.views import ViewMaker
from simclrv2.core.knn import knn_predict
from simclrv2.losses import nt_xent
from simclrv2.models.networks import SimCLRModel, arch_of, build_pretrain_model
from simclrv2 import distributed
from simclrv2.core.runtime import autocast, start
from simclrv2.train.summary import count_params
from simclrv2.core.batched import infer
from simclrv2.train.stepper import make_stepper
from simclrv2.train.batching import steps_per_epoch
from simclrv2.core.metrics import topk_accuracy
from simclrv2.train.memory import MemoryQueue, MovingAverage, capped_size
from simclrv2.train import summary
from simclrv2.train.loop import Stage, fit
from simclrv2.train.rundir import open_run


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
    """Pretrain an encoder + projection head; writes ``out_dir/last`` and ``metrics.jsonl``.

    Under torchrun the configured batch is global: each rank embeds its part, and NT-Xent takes
    negatives from every rank's embeddings (and, with ``memory_size > 0``, from a queue of past
    embeddings of a moving-average network).
    """
    cfg = copy.deepcopy(cfg)
    rt = start(cfg)
    run_dir = open_run(out_dir, cfg, "pretrain", overwrite, resume, rt.world.is_main)
    out = run_dir.path
    splits = splits or datasets.load(cfg.data, cfg.workers, need_val=cfg.pretrain.knn_every > 0)
    images = BatchFeed(splits.pretrain_images(), rt.device, cfg.data.on_device, cfg.workers, cfg.data.decode)
    n = len(images)
    s = cfg.pretrain
    if n < 2:
        raise datasets.DataError(f"pretraining needs at least 2 images, the data has {n}")
    batch = rt.global_batch(s.batch_size, n)
    local = batch // rt.world.size

    net = build_pretrain_model(cfg.model)
    model = rt.wrap(net, cfg.compile)
    stepper = make_stepper(model, s, steps_per_epoch(n, batch, True), batch, rt.device)
    views = ViewMaker.for_pretraining(cfg, rt.device, seed=rt.rank_seed(1))
    stateful: dict[str, Any] = {}
    memory_size = capped_size(s.memory_size, n, batch) if s.memory_size > 0 else 0
    if memory_size > 0:
        ema = MovingAverage(net, s.memory_momentum).to(rt.device)
        queue = MemoryQueue(memory_size, net.head.out_dim).to(rt.device)
        stateful = {"ema": ema, "queue": queue}
    meta = {"stage": "pretrain", "kind": "pretrain", "arch": arch_of(cfg.model), "config": cfg.to_dict(),
            "classes": splits.classes, "image_size": cfg.data.image_size, "params": count_params(net)}
    summary.show("pretrain", cfg, splits, cfg.model, count_params(net), rt.device, rt.world.size, out, s, batch,
                 stepper.peak_lr, steps_per_epoch(n, batch, True), is_main=rt.world.is_main, enabled=show_progress)
    stage = Stage("pretrain", out, net, stepper, meta, n, batch, s.epochs, drop_last=True, order=rt.order,
                  generators={"augment": views.generator}, stateful=stateful, is_main=rt.world.is_main,
                  shard=distributed.shard(rt.world), feeds=[images])
    offset = rt.world.rank * local

    def make_views(idx: torch.Tensor) -> torch.Tensor:
        x = images(idx)
        return torch.cat([views(x), views(x)])

    # On a CPU the next batch's views are made on a thread while this one trains (identical views).
    prefetch = Prefetcher(make_views, [views.generator]) if rt.device.type == "cpu" and \
        isinstance(views, ViewMaker) and views.backend == "batched" else None
    if prefetch is not None:
        stage.feeds.append(prefetch)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        both = (prefetch or make_views)(idx)
        with autocast(rt.device, cfg.amp):
            z = model(both)
        za, zb = z[:local], z[local:]
        negatives = None
        if stateful:
            negatives = queue.negatives()
            with autocast(rt.device, cfg.amp):
                keys = ema(both)
            pending.append(distributed.gather(keys.float()))
        return nt_xent(za, zb, s.temperature, distributed.gather_with_grad(za), distributed.gather_with_grad(zb),
                       offset, negatives)

    pending: list[torch.Tensor] = []

    def after_step() -> None:
        if stateful:
            ema.update(net)
            queue.enqueue(pending.pop())

    def evaluate(epoch: int) -> dict[str, float]:
        if not s.knn_every or (epoch % s.knn_every and epoch != s.epochs):
            return {}
        knn = knn_accuracy(net, splits, rt.device, s.knn_k, s.knn_temperature, cfg.amp)
        return {"knn_top1": knn["top1"], "knn_top5": knn["top5"]} if knn else {}

    run_dir.commit()  # the data and config are valid: only now is the directory created or replaced
    try:
        result = fit(stage, loss_of, evaluate, resume=run_dir.resume, show_progress=show_progress,
                     after_step=after_step)
    finally:
        if prefetch is not None:
            prefetch.close()
    return {**result, "checkpoint": str(out / "last"), "params": count_params(net)}
