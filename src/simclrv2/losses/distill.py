"""Knowledge distillation loss of SimCLRv2 (Eq. 3 of the paper, plus the optional labeled term)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    alpha: float = 1.0,
    labels: Tensor | None = None,
) -> Tensor:
    """L = -(1-a) mean_labeled log P_S(y|x) - a tau^2 mean_all sum_y P_T(y|x; tau) log P_S(y|x; tau).

    ``labels`` holds a class index for labeled images and -1 for unlabeled ones; the labeled term
    averages over the labeled images of the batch (zero when there are none). The teacher's logits
    carry no gradient. Both terms are means over images rather than sums, so the learning rate does
    not depend on the batch size. The soft term is scaled by tau^2 (Hinton et al., 2015, "Distilling
    the knowledge in a neural network", Sec. 2): its gradients scale as 1/tau^2, so without the factor
    a higher temperature would shrink the step and reweigh the labeled term. At tau = 1 (the paper's
    setting) nothing changes.
    """
    teacher_probs = F.softmax(_upcast(teacher_logits.detach()) / temperature, dim=1)
    student_log_probs = F.log_softmax(_upcast(student_logits) / temperature, dim=1)
    loss = -alpha * temperature**2 * (teacher_probs * student_log_probs).sum(dim=1).mean()
    if alpha < 1 and labels is not None:
        labeled = labels >= 0
        if labeled.any():
            hard = F.cross_entropy(_upcast(student_logits)[labeled], labels[labeled])
            loss = loss + (1 - alpha) * hard
    return loss


def _upcast(x: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 activations from autocast), float64 kept for exact checks."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
