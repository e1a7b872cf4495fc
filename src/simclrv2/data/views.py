"""Binds a stage's augmentation settings and random generator into one callable on uint8 batches."""

from __future__ import annotations

import torch
from torch import Tensor

from simclrv2.config import Config
from simclrv2.data import gpu_augment, official_augment
from simclrv2.data.ragged import RaggedImages


class ViewMaker:
    """``views(x_uint8) -> float [B, 3, size, size]`` in [0, 1], random per image, on ``x``'s device;
    ``x`` is a batch tensor or :class:`RaggedImages` (crop boxes drawn on each image's own size).

    ``kind`` is ``simclr`` (the full SimCLR view), ``crop_flip`` (fine-tuning, distillation) or
    ``none`` (evaluation). ``style`` picks the semantics: ``official`` (google-research/simclr's
    ``preprocess_for_train``, :mod:`~simclrv2.data.official_augment`, what the paper presets train
    with) or ``torchvision`` (:mod:`~simclrv2.data.gpu_augment`, kept for comparison and for the
    digits preset). The ``torchvision`` backend applies the per-image torchvision reference
    transforms one image at a time, for comparison; ``batched`` (the default) augments the whole
    batch at once.
    """

    def __init__(self, kind: str, size: int, strength: float = 1.0, blur: bool | None = None,
                 min_scale: float = 0.08, backend: str = "batched", seed: int = 0,
                 device: torch.device | str = "cpu", flip: float = 0.5, style: str = "torchvision") -> None:
        if kind not in ("simclr", "crop_flip", "none"):
            raise ValueError(f"unknown augmentation kind {kind!r}")
        if style not in ("official", "torchvision"):
            raise ValueError(f"unknown augmentation style {style!r}")
        if style == "official" and backend != "batched":
            raise ValueError("the official augmentation has only the batched backend")
        self.style = style
        self._ops = official_augment if style == "official" else gpu_augment
        self.kind, self.size, self.strength, self.blur, self.min_scale = kind, size, strength, blur, min_scale
        self.flip = flip
        self.backend = backend
        device = torch.device(device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.channels_last = device.type == "cuda"
        self._per_image = None
        if backend == "torchvision":
            from simclrv2.data import augment

            torch.manual_seed(seed)
            self._per_image = {
                "simclr": lambda: augment.simclr_transform(size, strength, blur, min_scale, flip),
                "crop_flip": lambda: augment.finetune_transform(size, min_scale, flip),
                "none": lambda: augment.eval_transform(size),
            }[kind]()

    @classmethod
    def for_pretraining(cls, cfg: Config, device: torch.device, seed: int) -> "ViewMaker":
        a = cfg.aug
        return cls("simclr", cfg.data.image_size, a.color_strength, a.blur, a.min_scale, a.backend, seed, device,
                   a.flip, a.style)

    @classmethod
    def for_finetuning(cls, cfg: Config, device: torch.device, seed: int) -> "ViewMaker":
        a = cfg.aug
        return cls("crop_flip", cfg.data.image_size, min_scale=a.min_scale, backend=a.backend, seed=seed,
                   device=device, flip=a.flip, style=a.style)

    def __call__(self, x: Tensor | RaggedImages) -> Tensor:
        if self._per_image is not None:
            images = x if isinstance(x, Tensor) else [x.image(i) for i in range(len(x))]
            out = torch.stack([self._per_image(img.cpu()) for img in images]).to(x.device)
        elif self.kind == "simclr":
            out = self._ops.simclr_views(x, self.size, strength=self.strength, blur=self.blur,
                                         min_scale=self.min_scale, generator=self.generator, flip=self.flip)
        elif self.kind == "crop_flip":
            out = self._ops.crop_flip(x, self.size, min_scale=self.min_scale, generator=self.generator,
                                      flip=self.flip)
        elif isinstance(x, RaggedImages):
            out = x.eval_views()  # the official preprocess_for_eval of each image at its own size
        else:
            out = gpu_augment.to_float(x, self.size)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out
