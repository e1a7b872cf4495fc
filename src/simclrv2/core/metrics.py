"""Classification metrics on held-out images."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from simclrv2.core.batched import infer


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
