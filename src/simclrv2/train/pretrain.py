"""Stage 1: contrastive pretraining without labels (NT-Xent on two augmented views of each image)."""

from __future__ import annotations

import copy
from collections.abc import Callable
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
from simclrv2.core.metrics import topk_accuracy, warn_if_degenerate
from simclrv2.train.memory import MemoryQueue, MovingAverage, capped_size, momentum_contrast
from simclrv2.train import summary
from simclrv2.train.loop import Stage, fit
from simclrv2.train.rundir import open_run


def knn_accuracy(model: SimCLRModel, splits: datasets.Splits, device: torch.device, k: int, temperature: float,
                 amp: bool = True, warn_as: str | None = None) -> dict[str, float] | None:
    """kNN top-1/top-5 (%) of the encoder's features: training split as the bank, validation as queries.
    With ``warn_as``, scores that say nothing (collapsed features, chance) get a WARNING line."""
    if splits.val is None or not len(splits.val) or not splits.classes or (splits.train.labels < 0).all():
        return None
    was_training = model.training
    model.eval()
    bank = infer(model.encoder.forward_features, splits.train.images, device, amp=amp)
    queries = infer(model.encoder.forward_features, splits.val.images, device, amp=amp)
    model.train(was_training)
    scores = knn_predict(bank, splits.train.labels, queries, len(splits.classes), k, temperature)
    if warn_as:
        warn_if_degenerate(scores, splits.val.labels, warn_as)
    return topk_accuracy(scores, splits.val.labels)


def _generators(views: Callable) -> dict[str, torch.Generator]:
    """The augmentation's random generator, saved in checkpoints for exact resumes (none for given views)."""
    return {"augment": views.generator} if isinstance(views, ViewMaker) else {}


def run(cfg: Config, out_dir: str | Path, splits: datasets.Splits | None = None, show_progress: bool = True,
        resume: bool = False, overwrite: bool = False, net: SimCLRModel | None = None,
        views: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """Pretrain an encoder + projection head; writes ``out_dir/last`` and ``metrics.jsonl``.

    ``net`` is the network to start from (default: a fresh one of ``cfg.model``; e.g. an imported
    official checkpoint, whose architecture must be ``cfg.model``'s). ``views`` replaces the SimCLR
    augmentation: called twice per step on the batch's uint8 images, it returns the first, then the
    second float view (default: ``cfg.aug``'s random views; the official-step tests feed fixed ones).

    Under torchrun the configured batch is global: each rank embeds its part, and NT-Xent takes
    negatives from every rank's embeddings. With ``memory_size > 0`` (SimCLRv2's memory buffer, as
    MoCo) every key is the moving-average network's: those of this batch and a queue of past ones.
    """
    cfg = copy.deepcopy(cfg)
    rt = start(cfg)
    run_dir = open_run(out_dir, cfg, "pretrain", overwrite, resume, rt.world.is_main)
    out = run_dir.path
    splits = splits or datasets.load(cfg.data, cfg.workers, need_val=cfg.pretrain.knn_every > 0)  # kNN monitor
    images = BatchFeed(splits.pretrain_images(), rt.device, cfg.data.on_device, cfg.workers, cfg.data.decode)
    n = len(images)
    s = cfg.pretrain
    if n < 2:
        raise datasets.DataError(f"pretraining needs at least 2 images, the data has {n}")
    batch = rt.global_batch(s.batch_size, n)
    local = batch // rt.world.size

    net = build_pretrain_model(cfg.model) if net is None else net.to(rt.device)
    model = rt.wrap(net, cfg.compile, cfg.amp)
    stepper = make_stepper(model, s, steps_per_epoch(n, batch, True), batch, rt.device, num_items=n)
    views = views or ViewMaker.for_pretraining(cfg, rt.device, seed=rt.rank_seed(1))
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
                  generators=_generators(views), stateful=stateful, is_main=rt.world.is_main,
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
        if stateful:  # keys of the current and past batches from the moving-average network (memory.py)
            with autocast(rt.device, cfg.amp):
                keys = ema(both).float()
            keys_a, keys_b = distributed.gather(keys[:local]), distributed.gather(keys[local:])
            negatives = queue.negatives()  # past batches only: this batch's keys are enqueued after the step
            pending.append(torch.cat([keys_a, keys_b]))
            return momentum_contrast(za, zb, keys_a, keys_b, s.temperature, offset, negatives)
        return nt_xent(za, zb, s.temperature, distributed.gather_with_grad(za), distributed.gather_with_grad(zb),
                       offset)

    pending: list[torch.Tensor] = []

    def after_step() -> None:
        if stateful:
            ema.update(net)
            queue.enqueue(pending.pop())

    def evaluate(epoch: int) -> dict[str, float]:
        if not s.knn_every or (epoch % s.knn_every and epoch != s.epochs):
            return {}
        knn = knn_accuracy(net, splits, rt.device, s.knn_k, s.knn_temperature, cfg.amp,
                           warn_as="pretrain: kNN" if epoch == s.epochs and rt.world.is_main else None)
        return {f"knn_{k}": v for k, v in knn.items()} if knn else {}

    # the data, config and checkpoint are valid: only then is the directory created or replaced
    try:
        result = fit(stage, loss_of, evaluate, resume=run_dir.resume, show_progress=show_progress,
                     after_step=after_step, commit=run_dir.commit)
    finally:
        if prefetch is not None:
            prefetch.close()
    return {**result, "checkpoint": str(out / "last"), "params": count_params(net)}
