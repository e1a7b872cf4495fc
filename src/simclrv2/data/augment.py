"""Per-image SimCLR transforms (torchvision ``transforms.v2``): the DataLoader path and the
statistical reference for :mod:`simclrv2.data.gpu_augment`.

Inputs are PIL images or uint8 ``[3, H, W]`` tensors; outputs are float32 ``[3, size, size]`` in
[0, 1] (SimCLR uses no mean/std normalisation).

Where we follow torchvision rather than the official SimCLR code (google-research/simclr,
``tf2/data_util.py``):

* crop: torchvision's ``RandomResizedCrop`` sampler (area then log-ratio, 10 tries, central-crop
  fallback) and bilinear resize; the official code uses TF's ``sample_distorted_bounding_box``
  (100 tries, whole-image fallback) and bicubic resize. Same scale and ratio ranges.
* colour jitter: torchvision's ops in a random order per image, clipped after each op, as the
  official ``color_jitter_rand``. Brightness is multiplicative (factor in
  ``[max(0, 1 - 0.8s), 1 + 0.8s]``), which is also the official SimCLRv2 choice
  (``impl='simclrv2'``; v1 was additive). Contrast blends with the mean *gray* level (TF: per-channel
  mean) and saturation blends with the gray image (TF: scales HSV saturation); hue shifts in HSV
  as TF does.
* blur: kernel ``2 * (size // 10 // 2) + 1`` and sigma uniform in [0.1, 2.0] as the official code,
  but reflect padding (torchvision) rather than TF's zero padding. Off by default below 96 px
  (the official CIFAR-10 setting).
* eval: exactly the official ``preprocess_for_eval`` (:func:`simclrv2.data.gpu_augment.to_float`):
  above 32 px the central crop keeping 0.875 of the shorter side, resized with TF's bicubic
  (Keys a = -0.5, no antialiasing: :mod:`simclrv2.data.tf_resize`), clipped to [0, 1]; at 32 px
  and below (CIFAR) no crop, images at that size only converted to float.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torchvision.transforms import v2

from simclrv2.data.gpu_augment import blur_kernel_size, to_float

__all__ = ["simclr_transform", "finetune_transform", "eval_transform", "SimCLRViews", "CenterCropResize"]


def _use_blur(size: int, blur: bool | None) -> bool:
    return size >= 96 if blur is None else blur


def simclr_transform(size: int, strength: float = 1.0, blur: bool | None = None, min_scale: float = 0.08,
                     flip: float = 0.5) -> Callable:
    """The SimCLR view of one image: crop + flip (probability ``flip``), colour jitter (p 0.8),
    grayscale (p 0.2), Gaussian blur (p 0.5; ``blur=None``: on iff ``size >= 96``), float in [0, 1]."""
    s = strength
    ops: list[Callable] = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(flip),
        v2.ToDtype(torch.float32, scale=True),  # jitter in float, as the batched path and TF
    ]
    if s > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8))
    ops.append(v2.RandomGrayscale(p=0.2))
    k = blur_kernel_size(size)
    if _use_blur(size, blur) and k > 1:
        ops.append(v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5))
    ops.append(v2.ToPureTensor())
    return v2.Compose(ops)


def finetune_transform(size: int, min_scale: float = 0.08, flip: float = 0.5) -> Callable:
    """Fine-tuning / distillation view: random resized crop and horizontal flip (probability ``flip``) only."""
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(flip),
        v2.ToDtype(torch.float32, scale=True),
        v2.ToPureTensor(),
    ])


class CenterCropResize:
    """The official evaluation view of a float ``[3, H, W]`` image: ``data_util.preprocess_for_eval``
    at ``size`` (:func:`simclrv2.data.gpu_augment.to_float`: central crop keeping 0.875 of the
    shorter side above 32 px, TF's bicubic resize without antialiasing, clipped to [0, 1])."""

    def __init__(self, size: int, proportion: float | None = None) -> None:
        self.size, self.proportion = size, proportion

    def __call__(self, img: Tensor) -> Tensor:
        return to_float(img, self.size, self.proportion)


def eval_transform(size: int, crop_proportion: float | None = None) -> Callable:
    """Evaluation view of a PIL image or uint8 tensor: float in [0, 1], the official
    ``preprocess_for_eval`` (see :class:`CenterCropResize`); ``crop_proportion`` overrides the
    official choice (0.875 above 32 px, no crop at or below)."""
    return v2.Compose([
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        CenterCropResize(size, crop_proportion),
        v2.ToPureTensor(),
    ])


class SimCLRViews:
    """``SimCLRViews(size, ...)(img) -> (view_1, view_2)``: independent SimCLR views of one image,
    for a Dataset's transform in the per-image DataLoader path."""

    def __init__(self, size: int, strength: float = 1.0, blur: bool | None = None, min_scale: float = 0.08,
                 flip: float = 0.5, n_views: int = 2) -> None:
        self.transform = simclr_transform(size, strength, blur, min_scale, flip)
        self.n_views = n_views

    def __call__(self, img) -> tuple[Tensor, ...]:
        return tuple(self.transform(img) for _ in range(self.n_views))
