"""Training objectives: NT-Xent for pretraining, the distillation loss for the student."""

from simclrv2.losses.distill import distill_loss
from simclrv2.losses.ntxent import nt_xent

__all__ = ["nt_xent", "distill_loss"]
