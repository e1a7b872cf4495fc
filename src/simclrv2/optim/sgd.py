"""Nesterov momentum SGD with the update rule of Keras 2's ``SGD(nesterov=True)``, which the official
``--optimizer=momentum`` uses (``tf2/model.py`` ``build_optimizer``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import Optimizer


class KerasNesterovSGD(Optimizer):
    """Keras 2 ``SGD(momentum, nesterov=True)`` (``tf_keras/src/optimizers/sgd.py``), per step:

        g <- g + weight_decay * w          (the official ``add_weight_decay``: an L2 term in the loss)
        v <- momentum * v - lr * g
        w <- w - lr * g + momentum * v

    The velocity holds ``lr x g``. torch's ``SGD(nesterov=True)`` keeps ``g`` in its buffer and multiplies
    by the current lr afterwards: the two agree only while the lr is constant (not during warmup/decay).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        if lr < 0:
            raise ValueError(f"SGD: learning rate must be >= 0, got {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - the class docstring gives the rule
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad.add(w, alpha=wd) if wd else w.grad
                state = self.state[w]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(w)
                v = state["velocity"]
                v.mul_(momentum).add_(g, alpha=-lr)
                w.add_(g, alpha=-lr).add_(v, alpha=momentum)
        return loss
