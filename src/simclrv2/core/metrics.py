"""Classification metrics on held-out images."""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from simclrv2.core.batched import infer


def topk_accuracy(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent. A k > 1 that is not below the number of classes is left out: top-5 of
    five classes or fewer is 100 whatever the model does."""
    out = {}
    for k in ks:
        if k > 1 and k >= logits.shape[1]:
            continue
        hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


def chance_level(labels: Tensor) -> tuple[float, float]:
    """Top-1 (%) of always answering the most frequent class of ``labels``, and the top-1 (%) a model
    must beat to be told apart from it: two standard errors of that rate on this many images."""
    n = len(labels)
    if n == 0:
        return 0.0, 0.0
    p = torch.bincount(labels.long().cpu()).max().item() / n
    return 100.0 * p, 100.0 * (p + 2 * math.sqrt(p * (1 - p) / n))


def degenerate(logits: Tensor, labels: Tensor) -> str | None:
    """Why these outputs say nothing about the images, else None: the same outputs for every image, one
    class answered for every image, or a top-1 no better than always answering the most frequent class."""
    if len(labels) < 2:
        return None
    logits = logits.float()
    if (logits - logits[0]).abs().max() <= 1e-6 * max(logits.abs().max().item(), 1.0):
        return (f"the outputs are the same for every one of the {len(labels)} images: the model ignores its input "
                f"(or the images are all alike)")
    predicted = logits.argmax(dim=1)
    if (predicted == predicted[0]).all() and logits.shape[1] > 1:
        return f"it answers class {predicted[0].item()} for every one of the {len(labels)} images"
    if torch.unique(labels).numel() < 2:
        return None
    chance, bar = chance_level(labels)
    top1 = 100.0 * (predicted.cpu() == labels.cpu()).float().mean().item()
    if top1 <= bar:
        return (f"top-1 {top1:.2f}% is no better than chance ({chance:.2f}%: always answering the most "
                f"frequent class, on {len(labels)} images)")
    return None


def warn_if_degenerate(logits: Tensor, labels: Tensor, what: str) -> str | None:
    """Log ``degenerate``'s finding about ``what`` as one WARNING line; return it."""
    finding = degenerate(logits, labels)
    if finding:
        logging.getLogger("simclrv2").warning("%s: %s", what, finding)
    return finding


def evaluate_classifier(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device,
                        amp: bool = True, warn_as: str | None = None) -> dict[str, float]:
    """Top-1/top-5 of an (unwrapped) classifier on held-out images; every rank computes the same.
    With ``warn_as`` (e.g. the stage name at its last epoch), outputs that say nothing about the
    images get a WARNING line (``degenerate``)."""
    was_training = model.training
    model.eval()
    logits = infer(model, images, device, amp=amp)
    model.train(was_training)
    if warn_as:
        warn_if_degenerate(logits, labels.to(logits.device), warn_as)
    return topk_accuracy(logits, labels)
