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
* eval: the official central crop keeping 0.875 of the shorter side, resized bicubically (with
  antialiasing, which TF's ``tf.image.resize`` leaves off) -- but only when the image is not already
  ``size`` x ``size``; images stored at the training size (CIFAR at 32 px) are only converted to
  float, which is what the official code does at <= 32 px. Photos of other sizes get the crop from
  :func:`simclrv2.data.files.eval_crop` on uint8 before they reach the model.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from simclrv2.data.gpu_augment import blur_kernel_size, center_crop_box

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
    """The official eval crop (a central square keeping ``proportion`` of the shorter side, bicubic
    resize to ``size``, clipped to [0, 1]); identity for images already ``size`` x ``size``."""

    def __init__(self, size: int, proportion: float = 0.875) -> None:
        self.size, self.proportion = size, proportion

    def __call__(self, img: Tensor) -> Tensor:
        height, width = img.shape[-2:]
        if height == self.size and width == self.size:
            return img
        top, left, h, w = center_crop_box(height, width, self.proportion)
        out = TF.resized_crop(img, top, left, h, w, [self.size, self.size],
                              interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        return out.clamp_(0, 1)


def eval_transform(size: int, crop_proportion: float = 0.875) -> Callable:
    """Evaluation view: float in [0, 1]; the official central crop + resize only for images that
    are not already ``size`` x ``size`` (see :class:`CenterCropResize`)."""
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
