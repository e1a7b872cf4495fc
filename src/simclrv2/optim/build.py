"""Build a stage's optimizer with BatchNorm parameters and biases kept out of weight decay."""

from __future__ import annotations

import torch
from torch import nn

from simclrv2.optim.lars import LARS


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The official ``build_optimizer`` exclusions (``batch_normalization``, ``bias``, ``head_supervised``)
    and ``add_weight_decay``, as three groups: weights (decayed, LARS-adapted); weights of modules marked
    ``lars_exclude``, the supervised head (decayed, whose decay the official code adds to the loss, but
    not adapted); BN parameters and biases (``exclude=True``, neither)."""
    decay, head, no_decay = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
            if is_norm or name == "bias" or p.ndim <= 1:
                no_decay.append(p)
            else:
                (head if getattr(module, "lars_exclude", False) else decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay, exclude=False),
              dict(params=no_decay, weight_decay=0.0, exclude=True)]
    if head:
        groups.append(dict(params=head, weight_decay=weight_decay, exclude=True))
    return groups


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
