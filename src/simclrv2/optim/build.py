"""Build a stage's optimizer with BatchNorm parameters and biases kept out of weight decay."""

from __future__ import annotations

import torch
from torch import nn

from simclrv2.optim.lars import LARS


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and the rest (``exclude=True``): BN parameters,
    biases, and modules marked ``lars_exclude`` (the supervised classifier, as in the official code)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
            excluded = is_norm or name == "bias" or p.ndim <= 1 or getattr(module, "lars_exclude", False)
            (no_decay if excluded else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay, exclude=False),
            dict(params=no_decay, weight_decay=0.0, exclude=True)]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, eta: float = 0.001, fused: bool = False) -> torch.optim.Optimizer:
    """``lars`` (SimCLR), ``sgd`` (momentum) or ``adamw``; ``fused`` uses torch's fused kernels (CUDA)."""
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=eta)
    for g in groups:
        g.pop("exclude")
    extra = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, **extra)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **extra)
    raise ValueError(f"unknown optimizer {name!r}: use lars, sgd or adamw")
