"""Optimizers and learning-rate schedules."""

from simclrv2.optim.build import build_optimizer, param_groups
from simclrv2.optim.lars import LARS
from simclrv2.optim.schedule import lr_at, scaled_lr, schedule_steps
from simclrv2.optim.sgd import KerasNesterovSGD

__all__ = ["LARS", "KerasNesterovSGD", "build_optimizer", "param_groups", "lr_at", "scaled_lr", "schedule_steps"]
