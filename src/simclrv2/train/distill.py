"""Stage 3: distill a frozen fine-tuned teacher into a student on all images, labeled or not."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simclrv2 import checkpoint, distributed
from simclrv2.config import Config
from simclrv2.data import datasets, subsets
from simclrv2.data.feed import BatchFeed
from simclrv2.data.views import ViewMaker
from simclrv2.losses import distill_loss
from simclrv2.models.networks import arch_of, build_network
from simclrv2.train.classifier import load_classifier, select_labeled
from simclrv2.core.runtime import autocast, prepare_model, start
from simclrv2.train.summary import count_params
from simclrv2.core.metrics import evaluate_classifier
from simclrv2.train.stepper import make_stepper
from simclrv2.train.batching import steps_per_epoch
from simclrv2.train import summary
from simclrv2.train.loop import Stage, fit
from simclrv2.train.rundir import open_run


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BatchNorm uses its running statistics) and no gradients: the teacher never changes."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def student_config(cfg: Config, teacher_arch: dict[str, Any]) -> Config:
    """The student's architecture: the teacher's unless ``distill.student*`` say otherwise."""
    d = cfg.distill
    cfg.model.model = d.student or teacher_arch["model"]
    cfg.model.width = d.student_width if d.student_width is not None else teacher_arch["width"]
    cfg.model.sk_ratio = d.student_sk_ratio if d.student_sk_ratio is not None else teacher_arch["sk_ratio"]
    cfg.model.cifar_stem = teacher_arch["cifar_stem"]
    return cfg


def run(cfg: Config, out_dir: str | Path, teacher_path: str | Path, splits: datasets.Splits | None = None,
        show_progress: bool = True, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train a student from scratch to match the teacher's softened predictions (plus, when
    ``distill.alpha < 1``, cross entropy on the labeled images)."""
    teacher_net, teacher_meta = load_classifier(teacher_path)
    cfg = student_config(copy.deepcopy(cfg), teacher_meta["arch"])
    cfg.validate()
    rt = start(cfg)
    device = rt.device
    run_dir = open_run(out_dir, cfg, "distill", overwrite, resume, rt.world.is_main)
    out = run_dir.path
    splits = splits or datasets.load(cfg.data, cfg.workers)
    if splits.classes and splits.classes != teacher_meta["classes"]:
        raise datasets.DataError(f"the teacher was trained on classes {teacher_meta['classes'][:5]}..., the data "
                                 f"has {splits.classes[:5]}...")
    d = cfg.distill
    images = BatchFeed(splits.pretrain_images(), device, cfg.data.on_device, cfg.workers, cfg.data.decode)
    labels = torch.full((len(images),), -1, dtype=torch.long)
    chosen = None  # labeled images chosen here (not listed in a file), recorded in labeled.txt
    if d.alpha < 1:
        labeled_idx, chosen = _labeled_indices(cfg, splits, Path(teacher_path).parent / "labeled.txt")
        labels[labeled_idx] = splits.train.labels[labeled_idx]
    labels = labels.to(device)

    teacher = freeze(prepare_model(teacher_net, device, amp=cfg.amp))  # never wrapped in DDP: it does not train
    arch = arch_of(cfg.model, len(teacher_meta["classes"]), 0)
    net = build_student(arch, d.init, teacher_meta)
    model = rt.wrap(net, cfg.compile, cfg.amp)
    n = len(images)
    if n < 2:  # BatchNorm needs two images in a batch
        raise datasets.DataError(f"distillation needs at least 2 images, the data has {n}")
    batch = rt.global_batch(d.batch_size, n)
    stepper = make_stepper(model, d, steps_per_epoch(n, batch, drop_last=True), batch, device)
    views = ViewMaker.for_finetuning(cfg, device, seed=rt.rank_seed(3))
    meta = {"stage": "distill", "kind": "classifier", "config": cfg.to_dict(), "classes": teacher_meta["classes"],
            "arch": arch, "image_size": cfg.data.image_size, "teacher": str(teacher_path),
            "params": count_params(net)}
    if splits.val is not None and len(splits.val):
        meta["teacher_val"] = evaluate_classifier(teacher, splits.val.images, splits.val.labels, device, cfg.amp)
    summary.show("distill", cfg, splits, arch, count_params(net), device, rt.world.size, out, d, batch, stepper.peak_lr,
                 steps_per_epoch(n, batch, True), is_main=rt.world.is_main, enabled=show_progress,
                 teacher=f"{teacher_path} ({teacher_meta['arch']['model']} x{teacher_meta['arch']['width']:g})")
    stage = Stage("distill", out, net, stepper, meta, n, batch, d.epochs, drop_last=True, order=rt.order,
                  generators={"augment": views.generator}, is_main=rt.world.is_main,
                  shard=distributed.shard(rt.world), feeds=[images])

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x = views(images(idx))  # one view, seen by teacher and student
        with torch.no_grad(), autocast(device, cfg.amp):
            teacher_logits = teacher(x)
        with autocast(device, cfg.amp):
            student_logits = model(x)
        return distill_loss(student_logits, teacher_logits, d.temperature, d.alpha, labels[idx.to(labels.device)])

    def evaluate(epoch: int) -> dict[str, float]:
        if splits.val is None or not len(splits.val):
            return {}
        metrics = evaluate_classifier(net, splits.val.images, splits.val.labels, device, cfg.amp,
                                      warn_as="distill" if epoch == d.epochs and rt.world.is_main else None)
        return {f"val_{k}": v for k, v in metrics.items()}

    def commit() -> None:  # teacher, data, config and checkpoint are valid: the directory is created or replaced
        run_dir.commit()
        if chosen is not None and rt.world.is_main:
            subsets.save_list(splits.train.names, chosen, out / "labeled.txt")

    result = fit(stage, loss_of, evaluate, resume=run_dir.resume, show_progress=show_progress, commit=commit)
    return {**result, "checkpoint": str(out / "best"), "params": count_params(net),
            "teacher_val": meta.get("teacher_val")}


def build_student(arch: dict[str, Any], init: str = "scratch", teacher_meta: dict[str, Any] | None = None) -> nn.Module:
    """The student network, its classifier trained as in the official distillation colab
    (google-research/simclr ``colabs/distillation_self_training.ipynb``): every variable under LARS
    with weight decay except BatchNorm parameters and biases (the fine-tuning classifier's exclusion,
    'head_supervised' in tf2/model.py, does not apply), its weights initialised as Keras' Dense layer
    (Glorot uniform, zero bias) rather than zero, which LARS would leave with a trust ratio of 1."""
    net = build_network(arch)
    net.fc.lars_exclude = False
    nn.init.xavier_uniform_(net.fc.weight)
    nn.init.zeros_(net.fc.bias)
    if init == "pretrained":
        init_from_pretrained(net, teacher_meta or {})
    return net


def init_from_pretrained(student: nn.Module, teacher_meta: dict[str, Any]) -> None:
    """Start the student's encoder from the checkpoint the teacher was fine-tuned from."""
    source = teacher_meta.get("pretrained")
    if not source:
        raise checkpoint.CheckpointError("distill.init=pretrained: the teacher's checkpoint does not name the "
                                         "pretrain checkpoint it was fine-tuned from")
    tensors, _ = checkpoint.load(source)
    checkpoint.load_weights(student.encoder, tensors, source=f"pretrained encoder {source} (distill.init=pretrained)",
                            prefix="encoder.")


def _labeled_indices(cfg: Config, splits: datasets.Splits, teacher_list: Path
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The labeled subset for the optional labeled term: the config's, else the teacher's own; and
    the same indices again when they were chosen here (to be recorded), else None."""
    if cfg.labels_file is None and teacher_list.is_file():
        cfg.labels_file = str(teacher_list)
    if cfg.labels_file:
        return subsets.from_file(splits.train.names, cfg.labels_file), None
    chosen = select_labeled(cfg, splits.train)
    return chosen, chosen
