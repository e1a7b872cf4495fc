"""The one optimizer-step helper every stage uses: scheduled lr, finite-loss check, backward, clip, step."""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from simclrv2 import distributed
from simclrv2.config import OptimConfig
from simclrv2.errors import NonFiniteError
from simclrv2.optim import build_optimizer, lr_at, scaled_lr, schedule_steps


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
                 device: torch.device, num_items: int | None = None) -> Stepper:
    """Optimizer and schedule of a stage: lr scaled with the global batch, warmup, cosine decay.

    The schedule is the official one over ``num_items`` images per epoch (see ``optim.schedule``);
    without ``num_items``, ``steps_per_epoch x global_batch`` stands for it."""
    peak = scaled_lr(section.lr, global_batch, section.lr_scaling)
    optimizer = build_optimizer(model, section.optimizer, peak, section.weight_decay, section.momentum,
                                section.trust_coefficient, fused=device.type == "cuda")
    n = steps_per_epoch * global_batch if num_items is None else num_items
    warmup, total = schedule_steps(n, global_batch, section.epochs, section.warmup())
    if section.epochs > 0 and warmup > total / 2:
        warn_long_warmup(section, peak)
    return Stepper(optimizer, peak, warmup, total)


def warn_long_warmup(section: OptimConfig, peak: float) -> None:
    """One WARNING line: a warmup past the whole run never reaches the peak rate, and one over most of
    it leaves the cosine decay little room."""
    name = type(section).__name__.removesuffix("Config").lower()
    warmup = section.warmup()
    what = (f"the learning rate never reaches its peak {peak:.4g} and never decays" if warmup >= section.epochs
            else f"the learning rate peaks ({peak:.4g}) only after {warmup / section.epochs:.0%} of the run")
    logging.getLogger("simclrv2").warning(
        "%s: warmup covers %g of %d epochs: %s; set %s.warmup_fraction=0.05 (5%% of the run, as the paper) "
        "or a smaller %s.warmup_epochs", name, warmup, section.epochs, what, name, name)
