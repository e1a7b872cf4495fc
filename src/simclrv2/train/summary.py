"""The block every command prints before it starts: what data, at what resolution, which network, on
which device with how many threads, with which effective batch and learning rate, written where.

:func:`describe` returns the fields (tested); :func:`show` prints them once, on rank 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simclrv2.config import Config, OptimConfig
from simclrv2.core.runtime import uses_bf16
from simclrv2.data.datasets import Splits


def count_params(model: torch.nn.Module) -> int:
    """Trainable and frozen parameters (BatchNorm statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def _count(n: int) -> str:
    return f"{n:,}"


def dataset_line(cfg: Config, splits: Splits | None) -> str:
    """``kind path: N train / M val [/ U unlabeled] images, K classes``."""
    where = cfg.data.path or ("embedded" if cfg.data.dataset == "digits" else "-")
    line = f"{cfg.data.dataset} {where}"
    if splits is None:
        return line
    parts = [f"{_count(len(splits.train))} train"]
    if splits.val is not None:
        parts.append(f"{_count(len(splits.val))} val")
    if splits.unlabeled is not None:
        parts.append(f"{_count(len(splits.unlabeled))} unlabeled")
    classes = f"{len(splits.classes)} classes" if splits.classes else "no classes"
    return f"{line}: {' / '.join(parts)} images, {classes}"


def model_line(model: dict[str, Any] | Any, params: int) -> str:
    """``resnet18 x0.25, SK off, CIFAR stem, 2.80M parameters`` from an ``arch`` dict or a ModelConfig."""
    get = model.get if isinstance(model, dict) else lambda k: getattr(model, k)
    sk = f"SK {get('sk_ratio'):g}" if get("sk_ratio") else "SK off"
    stem = "CIFAR stem" if get("cifar_stem") else "ImageNet stem"
    return f"{get('model')} x{get('width'):g}, {sk}, {stem}, {params / 1e6:.2f}M parameters"


def precision(device: torch.device | str, amp: bool) -> str:
    """How the network computes: ``bf16 autocast`` (CUDA, AMX CPUs, with ``amp``) or ``float32``."""
    device = torch.device(device)
    if uses_bf16(device, amp):
        return "bf16 autocast" + (" (AMX; amp=false for float32)" if device.type == "cpu" else "")
    return "float32"


def describe(stage: str, cfg: Config, splits: Splits | None, model: dict[str, Any] | Any, params: int,
             device: torch.device | str, world_size: int, out: str | Path | None,
             section: OptimConfig | None = None, batch: int | None = None, peak_lr: float | None = None,
             steps_per_epoch: int | None = None, **extra: Any) -> dict[str, str]:
    """The summary fields of a stage, in print order; ``extra`` adds lines (e.g. ``labeled``)."""
    fields = {"dataset": dataset_line(cfg, splits), **{k: str(v) for k, v in extra.items() if v is not None},
              "resolution": f"{cfg.data.image_size} px", "model": model_line(model, params),
              "device": f"{device}" + (f", {world_size} processes" if world_size > 1 else "") + f", {precision(device, cfg.amp)}",
              "threads": f"{torch.get_num_threads()} per process"}
    if section is not None and batch is not None:
        fields["batch"] = f"{batch} global" + (f" ({batch // world_size} per process)" if world_size > 1 else "")
        rule = {"sqrt": f" = {section.lr:g} x sqrt({batch})", "linear": f" = {section.lr:g} x {batch}/256"}
        lr = peak_lr if peak_lr is not None else section.lr
        fields["lr"] = f"{lr:.4g}{rule.get(section.lr_scaling, '')} ({section.optimizer}, " \
                       f"{section.warmup():g} warmup epochs, cosine decay)"
        steps = f" x {steps_per_epoch} steps" if steps_per_epoch else ""
        fields["epochs"] = f"{section.epochs}{steps}"
    if out:
        fields["out"] = str(out)
    return fields


def format_block(stage: str, fields: dict[str, str]) -> str:
    width = max(map(len, fields), default=0)
    return "\n".join([f"== simclrv2 {stage}"] + [f"  {k:<{width}}  {v}" for k, v in fields.items()])


def record_line(title: str, values: dict[str, Any]) -> str:
    """``final: val_top1 91.92, epoch 100``: one result record on one line."""
    return title + ": " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def show(stage: str, *args: Any, is_main: bool = True, enabled: bool = True, **kwargs: Any) -> dict[str, str]:
    """Print the block of :func:`describe` (rank 0 only, when ``enabled``); return the fields."""
    fields = describe(stage, *args, **kwargs)
    if is_main and enabled:
        print(format_block(stage, fields), flush=True)
    return fields
