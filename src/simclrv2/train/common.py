"""What every training stage shares: one optimizer-step helper, batch sampling, batched inference,
metrics logging and the progress bar. Where a stage runs (device, threads, seeding, autocast) is
:mod:`simclrv2.train.runtime`, re-exported here. (Run directories: :mod:`.rundir`.)"""

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
from simclrv2.config import OptimConfig
from simclrv2.data.feed import chunks
from simclrv2.data.files import FileImages
from simclrv2.errors import NonFiniteError
from simclrv2.optim import build_optimizer, lr_at, scaled_lr
from simclrv2.train.runtime import (Runtime, autocast, prepare_model, resolve_device, seed_everything,  # noqa: F401
                                    setup_backend, start)


class NonFiniteLossError(NonFiniteError):
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


from simclrv2.train.rundir import RunDirError  # noqa: E402,F401 - moved to .rundir; kept for old imports
