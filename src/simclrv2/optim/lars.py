"""LARS (You et al., 2017) as SimCLR uses it (google-research/simclr ``lars_optimizer.py``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling with heavy-ball momentum.

    For each parameter ``w`` with gradient ``g`` (per step):

        g <- g + weight_decay * w
        trust = eta * ||w|| / ||g||  if both norms > 0 else 1   (groups with exclude=True: 1)
        v <- momentum * v + lr * trust * g
        w <- w - v

    The momentum buffer holds the learning rate, as in the reference. Param groups with
    ``exclude=True`` get no trust ratio; with ``weight_decay=0`` no decay (see ``build.param_groups``).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, exclude: bool = False) -> None:
        if lr < 0:
            raise ValueError(f"LARS: learning rate must be >= 0, got {lr}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, exclude=exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - the class docstring gives the rule
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, eta = group["lr"], group["momentum"], group["eta"]
            wd, exclude = group["weight_decay"], group["exclude"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g: Tensor = w.grad
                if wd:
                    g = g.add(w, alpha=wd)
                if not exclude:
                    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * trust
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(w)
                v = state["momentum_buffer"]
                v.mul_(momentum).add_(g, alpha=lr)
                w.sub_(v)
        return loss
