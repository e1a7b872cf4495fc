"""What every training stage shares: one optimizer-step helper, batch sampling, batched inference,
metrics logging and the progress bar. Where a stage runs (device, threads, seeding, autocast) is
:mod:`simclrv2.train.runtime`, re-exported here."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclrv2 import distributed
from simclrv2.checkpoint import atomic_write
from simclrv2.config import Config, OptimConfig, save_yaml
from simclrv2.data.feed import chunks
from simclrv2.data.files import FileImages
from simclrv2.optim import build_optimizer, lr_at, scaled_lr
from simclrv2.train.runtime import (Runtime, autocast, prepare_model, resolve_device, seed_everything,  # noqa: F401
                                    setup_backend, start)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Stepper:
    """One optimizer step: set the scheduled lr, check the loss, backward, (clip), step, zero grads."""

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, warmup_steps: int, total_steps: int,
                 clip_norm: float | None = None) -> None:
        self.optimizer = optimizer
        self.peak_lr, self.warmup_steps, self.total_steps = peak_lr, warmup_steps, total_steps
        self.clip_norm = clip_norm
        self.step_count = 0

    @property
    def lr(self) -> float:
        return lr_at(self.step_count, self.peak_lr, self.warmup_steps, self.total_steps)

    def step(self, loss: Tensor) -> float:
        value = distributed.mean(loss.detach()).item()  # every rank sees the same value and stops together
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss is {value} at step {self.step_count}: stopping (lower the "
                                     f"learning rate?); the last good checkpoint is kept")
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        loss.backward()
        if self.clip_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return value

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step_count"])


def make_stepper(model: nn.Module, section: OptimConfig, steps_per_epoch: int, global_batch: int,
                 device: torch.device) -> Stepper:
    """Optimizer and schedule of a stage: lr scaled with the global batch, warmup, cosine decay."""
    peak = scaled_lr(section.lr, global_batch, section.lr_scaling)
    optimizer = build_optimizer(model, section.optimizer, peak, section.weight_decay, section.momentum,
                                section.trust_coefficient, fused=device.type == "cuda")
    total = max(1, section.epochs * steps_per_epoch)
    warmup = int(round(section.warmup_epochs * steps_per_epoch))
    return Stepper(optimizer, peak, warmup, total)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool) -> list[Tensor]:
    """A shuffled epoch of index batches.

    ``drop_last`` keeps only full batches (contrastive loss); otherwise the permutation is split into
    near-equal batches so no batch is a single image (BatchNorm needs two).
    """
    perm = torch.randperm(n, generator=generator)
    batch_size = min(batch_size, n)
    if drop_last:
        steps = n // batch_size
        return list(perm[: steps * batch_size].view(steps, batch_size))
    return list(torch.tensor_split(perm, math.ceil(n / batch_size)))


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    batch_size = min(batch_size, n)
    return n // batch_size if drop_last else math.ceil(n / batch_size)


@torch.no_grad()
def infer(fn, images: Tensor | FileImages, device: torch.device, batch_size: int = 512, amp: bool = True) -> Tensor:
    """Apply ``fn`` to uint8 images in batches (converted to float [0,1] on the device); float32 out on CPU."""
    outputs = []
    for chunk in chunks(images, batch_size):
        x = chunk.to(device, non_blocking=True).float().div_(255)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            outputs.append(fn(x).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def topk_accuracy(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent (k capped at the number of classes)."""
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hit = (logits.topk(kk, dim=1).indices == labels[:, None]).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


def evaluate_classifier(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device,
                        amp: bool = True) -> dict[str, float]:
    """Top-1/top-5 of an (unwrapped) classifier on held-out images; every rank computes the same."""
    was_training = model.training
    model.eval()
    logits = infer(model, images, device, amp=amp)
    model.train(was_training)
    return topk_accuracy(logits, labels)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class RunLog:
    """Metrics of a run: one JSON object per line in ``metrics.jsonl`` (written by rank 0 only)."""

    def __init__(self, out_dir: Path, stage: str, enabled: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.stage = stage
        self.enabled = enabled
        self.start = time.time()
        from simclrv2.tracking import TensorBoardLog  # optional: a no-op without tensorboard

        self.tensorboard = TensorBoardLog(Path(out_dir) / "tensorboard", stage) if enabled else None

    def write(self, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"stage": self.stage, "time": round(time.time() - self.start, 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(values, step=int(values.get("epoch", values.get("step", 0))))


def progress(total: int, desc: str, enabled: bool = True):
    """A tqdm bar (loss, lr, images/s in its postfix; ETA from tqdm) on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0)


class RunDirError(ValueError):
    """The output directory holds a different run."""


IGNORED_FOR_RESUME = ("device", "workers", "threads")
READING_KEYS = ("on_device", "stream", "memory_gb", "decode")  # where images are read from, not what is computed
STAGE_SECTIONS = ("pretrain", "finetune", "distill", "supervised")
LABEL_KEYS = ("labels", "labels_per_class", "labels_file", "label_fractions")


def _relevant(values: dict[str, Any], stage: str | None) -> dict[str, Any]:
    """The part of a config that decides what ``stage`` computes: a pretraining run does not depend
    on fine-tuning hyperparameters or label choices, and so on."""
    values = {k: v for k, v in values.items() if k not in IGNORED_FOR_RESUME}
    if isinstance(values.get("data"), dict):
        values["data"] = {k: v for k, v in values["data"].items() if k not in READING_KEYS}
    if stage in STAGE_SECTIONS:
        values = {k: v for k, v in values.items() if k not in STAGE_SECTIONS or k == stage}
        if stage == "pretrain":
            values = {k: v for k, v in values.items() if k not in LABEL_KEYS}
    return values


def open_run_dir(out_dir: str | Path, cfg: Config, overwrite: bool = False, is_main: bool = True,
                 stage: str | None = None) -> tuple[Path, bool]:
    """Create the run directory and save the resolved config in it; say whether to resume.

    A directory holding a checkpoint of the same config (as far as ``stage`` depends on it) is
    resumed; one holding a different config is refused unless ``overwrite``, so a finished run is
    never clobbered by accident.
    """
    out = Path(out_dir)
    saved = out / "config.yaml"
    has_checkpoint = (out / "last.safetensors").is_file()
    resume = False
    if saved.is_file() and has_checkpoint:
        import yaml

        old = _relevant(yaml.safe_load(saved.read_text()) or {}, stage)
        new = _relevant(cfg.to_dict(), stage)
        if old != new and not overwrite:
            flat_old, flat_new = _flatten(old), _flatten(new)
            diff = [k for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k)]
            raise RunDirError(f"{out} holds a run with a different config (differs in: {', '.join(diff)}); "
                              f"choose another --out or pass --overwrite")
        resume = old == new
    if not is_main:  # rank 0 prepares the directory; the others only need to know whether to resume
        distributed.barrier()
        return out, resume
    if overwrite and out.exists() and not resume:
        for name in ("last", "best"):
            for suffix in (".safetensors", ".json", ".state.pt"):
                (out / f"{name}{suffix}").unlink(missing_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # left by a writer that was killed; the files they replace are intact
        stale.unlink()
    atomic_write(saved, lambda p: save_yaml(cfg, p))
    distributed.barrier()
    return out, resume


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
