"""BatchNorm whose moving variance follows the biased batch variance, as TensorFlow's.

torch updates ``running_var`` with the unbiased batch variance (``x n/(n-1)``, n values per channel);
Keras ``BatchNormalization`` / ``SyncBatchNormalization``, which the official SimCLR code uses, with the
biased one it normalizes by. The difference is 1/(n-1) of the variance: small for convolutions, but
1/(2B-1) for the projection head's BatchNorm1d. Normalization, momentum (0.1 = TF decay 0.9) and
epsilon (1e-5) are torch's defaults, which equal the official ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNormNoShift1d"]


class _BiasedRunningVar:
    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.track_running_stats and self.momentum is not None):
            return super().forward(x)
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        new = self.running_var.clone()  # torch's update lands here (autograd may keep it: not changed after)
        y = F.batch_norm(x, self.running_mean, new, self.weight, self.bias, True, self.momentum, self.eps)
        n, m = x.numel() // x.shape[1], self.momentum
        with torch.no_grad():  # new = (1-m) old + m var n/(n-1); store (1-m) old + m var
            self.running_var.mul_((1 - m) / n).add_(new, alpha=(n - 1) / n)
        return y


class BatchNorm2d(_BiasedRunningVar, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the TensorFlow moving variance."""


class BatchNorm1d(_BiasedRunningVar, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with the TensorFlow moving variance."""


class BatchNormNoShift1d(BatchNorm1d):
    """BatchNorm1d with a learned scale but no shift (TF ``BatchNormalization(center=False)``)."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.bias = None

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)
