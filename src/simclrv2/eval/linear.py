"""Linear evaluation of a frozen encoder, two protocols.

``fast``: multinomial logistic regression (L-BFGS) on standardised features of the un-augmented
images, in seconds; a monitor. ``paper``: the protocol of the SimCLR papers' linear evaluation, a
linear layer trained with SGD on crop + flip views through the frozen encoder (see ``paper_linear_eval``).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2.config import Config, EvalConfig
from simclrv2.core.runtime import autocast
from simclrv2.errors import NonFiniteError

PROTOCOLS = ("fast", "paper")


def describe(section: EvalConfig) -> str:
    """One line naming the protocol a ``linear`` result was measured with, for reports."""
    if section.linear == "paper":
        return (f"paper protocol: linear layer on the frozen encoder's features, crop + flip views, "
                f"{section.epochs} epochs of {section.optimizer} (lr {section.lr:g} {section.lr_scaling}-scaled, "
                f"batch {section.batch_size}"
                f"{', encoder BatchNorm on batch statistics' if section.encoder_bn == 'batch' else ''})")
    return "fast probe: L-BFGS logistic regression on standardised features of un-augmented images"


def linear_eval(train_features: Tensor, train_labels: Tensor, val_features: Tensor, max_iter: int = 1000,
                C: float = 1.0) -> Tensor:
    """Fit scikit-learn's L-BFGS logistic regression on ``train_features``; class scores for ``val_features``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if not (torch.isfinite(train_features).all() and torch.isfinite(val_features).all()):
        raise NonFiniteError("linear evaluation: the features hold NaN or infinite values (the encoder diverged)")
    scaler = StandardScaler().fit(train_features.numpy())
    clf = LogisticRegression(max_iter=max_iter, C=C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(train_features.numpy()), train_labels.numpy())
    probs = clf.predict_proba(scaler.transform(val_features.numpy()))
    num_classes = int(train_labels.max()) + 1
    full = np.zeros((probs.shape[0], num_classes), dtype=np.float32)
    full[:, clf.classes_] = probs
    return torch.from_numpy(full)


def paper_linear_eval(features: Callable[[Tensor], Tensor], train_images, train_labels: Tensor,
                      val_features: Tensor, num_classes: int, cfg: Config, device: torch.device,
                      views: Callable[[Tensor], Tensor] | None = None, encoder: nn.Module | None = None,
                      val_images=None) -> Tensor:
    """Train a linear classifier on ``features`` (the frozen encoder, in eval mode) of augmented training
    images (``train_linear_head``); class scores for ``val_features`` (features of the evaluation images).

    ``eval.encoder_bn=batch`` (needs ``encoder`` and ``val_images``): as the official linear evaluation,
    where ``trainable=False`` reaches the encoder's ``BatchNormRelu`` wrappers but not the BatchNorm layers
    inside, a copy of ``encoder`` normalises with each batch's statistics while the head trains (updating
    its moving statistics), and ``val_images`` are scored with the statistics it ends with."""
    batch_bn = cfg.eval.encoder_bn == "batch"
    if batch_bn:
        if encoder is None or val_images is None:
            raise ValueError("eval.encoder_bn=batch needs the encoder and the evaluation images")
        encoder = copy.deepcopy(encoder).train()
        features = encoder.forward_features
    head, _ = train_linear_head(features, train_images, train_labels, val_features.shape[1], num_classes, cfg,
                                device, views)
    if batch_bn:
        from simclrv2.core.batched import infer

        val_features = infer(encoder.eval().forward_features, val_images, device, amp=cfg.amp)
    with torch.no_grad():
        return head.cpu()(val_features.float())


def train_linear_head(features: Callable[[Tensor], Tensor], train_images, train_labels: Tensor, dim: int,
                      num_classes: int, cfg: Config, device: torch.device,
                      views: Callable[[Tensor], Tensor] | None = None) -> tuple[nn.Linear, list[float]]:
    """The linear head trained on ``features`` of augmented training images, and its loss at each step.

    As google-research/simclr's linear evaluation (``--train_mode=finetune --fine_tune_after_block=4
    --zero_init_logits_layer``): the head is one dense layer with bias and without BatchNorm on the
    encoder's pooled output (``tf2/model.py`` ``SupervisedHead``), zero-initialised, trained on crop + flip
    views (``data.py``: colour distortion only for pretraining) while the encoder stays frozen with its
    BatchNorm in inference mode (its layers get ``trainable=False``). The step is the official one:
    ``--optimizer=momentum`` is Keras 2's Nesterov SGD (``KerasNesterovSGD``) with weight decay on every
    trainable non-BN variable, the bias included (``add_weight_decay``); ``lars`` decays the kernel
    outside LARS (no trust ratio), as for ``head_supervised``; the schedule is ``WarmUpAndCosineDecay``
    over ``get_train_steps`` (``schedule_steps``). Defaults (``EvalConfig``) as the official README for
    ImageNet: lr 0.1 x B/256, no warmup, 90 epochs at B=4096, weight decay 1e-6 (100 epochs, B=512, no
    decay on CIFAR-10, confirmed by the authors in issue #5). ``views`` replaces the augmentation
    (tests: none, or the official side's fixed views).
    """
    from simclrv2.data.feed import BatchFeed
    from simclrv2.data.views import ViewMaker
    from simclrv2.optim import KerasNesterovSGD, build_optimizer, lr_at, scaled_lr, schedule_steps

    s = cfg.eval
    n = len(train_labels)
    if n == 0:
        raise ValueError("linear evaluation needs labeled training images")
    batch = min(s.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    warmup, total = schedule_steps(n, batch, s.epochs, s.warmup())
    peak = scaled_lr(s.lr, batch, s.lr_scaling)
    images = BatchFeed(train_images, device, cfg.data.on_device, cfg.workers, cfg.data.decode)
    views = views or ViewMaker.for_finetuning(cfg, device, seed=cfg.seed + 3)
    order = torch.Generator().manual_seed(cfg.seed)
    labels = train_labels.to(device)
    head = nn.Linear(dim, num_classes).to(device)
    head.lars_exclude = True  # the official head_supervised: decayed (kernel only) outside LARS
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    if s.optimizer == "sgd":
        optimizer = KerasNesterovSGD(head.parameters(), peak, s.momentum, s.weight_decay)
    else:
        optimizer = build_optimizer(head, s.optimizer, peak, s.weight_decay, s.momentum, s.trust_coefficient)
    step, losses = 0, []
    for _ in range(s.epochs):
        batches = list(torch.tensor_split(torch.randperm(n, generator=order), steps_per_epoch))
        images.plan(batches)
        for idx in batches:
            with torch.no_grad(), autocast(device, cfg.amp):
                x = features(views(images(idx)))
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, peak, warmup, total)
            loss = F.cross_entropy(head(x.float()), labels[idx.to(labels.device)])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            step += 1
    return head, [float(v) for v in losses]


def linear_probe(cfg: Config, features: Callable[[Tensor], Tensor], train_images, train_labels: Tensor,
                 train_features: Tensor, val_features: Tensor, num_classes: int, device: torch.device,
                 encoder: nn.Module | None = None, val_images=None) -> Tensor:
    """Class scores of the validation images by the protocol ``eval.linear`` names (``fast`` uses only
    the precomputed ``train_features``; ``paper`` trains on augmented ``train_images``; with
    ``eval.encoder_bn=batch`` it also needs the ``encoder`` module and the ``val_images``)."""
    if cfg.eval.linear == "paper":
        return paper_linear_eval(features, train_images, train_labels, val_features, num_classes, cfg, device,
                                 encoder=encoder, val_images=val_images)
    scores = linear_eval(train_features, train_labels, val_features)
    if scores.shape[1] < num_classes:  # classes missing from the labeled subset get no score
        scores = F.pad(scores, (0, num_classes - scores.shape[1]))
    return scores
