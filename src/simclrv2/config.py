"""Typed run configuration: dataclasses, named presets, YAML files and ``key=value`` overrides.

A config has shared sections (``data``, ``model``, ``aug``) and one section per training stage
(``pretrain``, ``finetune``, ``distill``, ``supervised``). On the command line a flat key such as
``epochs=100`` goes to the section of the stage being run, then to the shared sections;
``finetune.epochs=30`` names a section explicitly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simclrv2.errors import UserError


class ConfigError(UserError):
    """A config key or value is wrong; the message names it."""


@dataclass
class DataConfig:
    dataset: str = "digits"  # digits | cifar10 | cifar100 | stl10 | folder
    path: str | None = None  # dataset root (torchvision root, or ImageFolder tree)
    image_size: int = 32  # images are stored and trained at this size
    val_fraction: float = 0.1  # held out per class when the data has no validation split
    download: bool = False  # let torchvision download the dataset
    strict: bool = False  # fail on unreadable images instead of skipping them
    on_device: bool = True  # keep decoded images on the training device when it is a GPU and they fit
    stream: str = "auto"  # image folders: on = read from disk every epoch | off = decode once into memory |
    #                       auto = stream when decoded they would exceed memory_gb
    memory_gb: float = 0.0  # memory decoded images may take before auto streams (0: half the machine's RAM)
    cache_size: int = 0  # folders: each photo is kept with its aspect ratio, short side at most this; training
    #                      crops are cut from it (0: ceil(image_size / sqrt(0.08)), 792 px at image_size 224)
    crop: str = "full"  # folders: training crops from the whole photo (full) | from its centre square (square)
    max_pixels: int = 178_956_970  # larger images are refused (data.strict) or skipped: decompression bombs
    decode: str = "workers"  # streamed JPEGs: decoded in DataLoader workers | on the device (nvJPEG)


@dataclass
class ModelConfig:
    model: str = "resnet50"
    width: float = 1.0
    sk_ratio: float = 0.0
    cifar_stem: bool = False  # 3x3 stride-1 stem without max-pool, for 32-px images
    head_layers: int = 3  # projection head depth (SimCLRv2: 3)
    head_dim: int | None = None  # hidden width of the head (None: encoder feature width)
    proj_dim: int = 128
    ft_layer: int = 1  # fine-tune from this head layer (0: encoder output; SimCLRv2: 1)


@dataclass
class AugConfig:
    color_strength: float = 1.0  # colour-jitter strength s (CIFAR: 0.5)
    blur: bool | None = None  # Gaussian blur; None: on for images of 96 px and more
    min_scale: float = 0.08  # smallest crop area fraction of random resized crop
    flip: float = 0.5  # horizontal-flip probability (0 for data where left/right matters, e.g. digits)
    backend: str = "batched"  # batched (on the training device) | torchvision (per image, workers)
    # official: google-research/simclr's preprocess_for_train (TF crop sampler, bicubic resize, TF colour
    # ops, batch blur), what the paper measured; the imagenet, cifar10 and folder presets | torchvision:
    # RandomResizedCrop/ColorJitter semantics, for comparison, the digits preset and configs saved before
    # the option existed (a resumed run keeps its augmentation)
    style: str = "torchvision"


@dataclass
class OptimConfig:
    """What every stage trains with."""

    epochs: int = 100
    batch_size: int = 512
    lr: float = 0.075  # base learning rate, scaled by ``lr_scaling``
    lr_scaling: str = "sqrt"  # sqrt: lr * sqrt(batch) | linear: lr * batch / 256 | none
    warmup_epochs: float = 0.0
    # warmup over this fraction of the epochs instead (the paper: 0.05); setting warmup_epochs later
    # (file, override) without it clears it
    warmup_fraction: float | None = None
    weight_decay: float = 1e-6
    optimizer: str = "lars"  # lars | sgd | adamw
    momentum: float = 0.9
    trust_coefficient: float = 0.001  # LARS eta

    def warmup(self) -> float:
        """Warmup length in epochs: ``warmup_fraction`` of ``epochs`` when set, else ``warmup_epochs``."""
        if self.warmup_fraction is not None:
            return self.warmup_fraction * self.epochs
        return self.warmup_epochs


@dataclass
class PretrainConfig(OptimConfig):
    epochs: int = 100
    batch_size: int = 512
    lr: float = 0.075
    warmup_epochs: float = 10.0
    weight_decay: float = 1e-4
    temperature: float = 0.1
    memory_size: int = 0  # MoCo-style queue of extra negatives (paper: 65536); 0 = off
    memory_momentum: float = 0.999
    knn_every: int = 1  # kNN-monitor on the validation split every N epochs (0 = off)
    knn_k: int = 200
    knn_temperature: float = 0.1


@dataclass
class FinetuneConfig(OptimConfig):
    epochs: int = 60
    batch_size: int = 1024
    lr: float = 0.005  # x sqrt(1024) = 0.16, the paper's fine-tuning rate
    weight_decay: float = 0.0
    # label fraction -> epochs, for a run given by a fraction (pipeline, --labels) or by a list holding
    # that share of the training images (--labels-file, e.g. the official 10% list: 128,116 of
    # 1,281,167); other runs use ``epochs``. Setting ``finetune.epochs`` later (file, override) without
    # the table clears it.
    epochs_by_labels: dict[float, int] = field(default_factory=dict)

    def epochs_for(self, fraction: float | None, rel_tol: float = 1e-9) -> int:
        """The epochs of a run on ``fraction`` of the labels: the table's entry within ``rel_tol``
        (a list's share is not exact: per-class rounding, a folder with part of the images), else ``epochs``."""
        for f, epochs in self.epochs_by_labels.items():
            if fraction is not None and math.isclose(f, fraction, rel_tol=rel_tol):
                return epochs
        return self.epochs


@dataclass
class DistillConfig(OptimConfig):
    epochs: int = 100
    batch_size: int = 512
    lr: float = 0.075
    warmup_epochs: float = 5.0
    weight_decay: float = 1e-4
    temperature: float = 1.0  # tau of the softened teacher and student distributions
    alpha: float = 1.0  # weight of the distillation term; 1 - alpha weighs the labeled loss
    student: str | None = None  # student encoder; None: the teacher's (self-distillation)
    student_width: float | None = None  # None: the teacher's width
    student_sk_ratio: float | None = None
    init: str = "scratch"  # student start: scratch | pretrained (the teacher's pretrained encoder; same architecture)


@dataclass
class SupervisedConfig(OptimConfig):
    """Baseline trained from scratch on the labeled subset only."""

    epochs: int = 60
    batch_size: int = 256
    lr: float = 0.1
    lr_scaling: str = "linear"
    optimizer: str = "sgd"
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4


@dataclass
class EvalConfig(OptimConfig):
    """Linear evaluation of a frozen pretrained encoder (``evaluate``, the pipeline's ``linear`` rows).

    ``linear=fast``: L-BFGS logistic regression on features of the un-augmented images (seconds).
    ``linear=paper``: the SimCLR papers' protocol, a linear layer trained on crop + flip views with
    the optimizer below; defaults as google-research/simclr's README for ImageNet (Nesterov momentum,
    lr 0.1 x B/256, B=4096, 90 epochs, no warmup, weight decay 1e-6). ``encoder_bn=batch``: the encoder's
    BatchNorm as the official code runs it there (batch statistics, moving statistics updated; ``frozen``:
    eval mode).
    """

    linear: str = "fast"  # fast | paper
    encoder_bn: str = "frozen"  # frozen | batch (paper protocol only)
    epochs: int = 90
    batch_size: int = 4096
    lr: float = 0.1
    lr_scaling: str = "linear"
    warmup_epochs: float = 0.0
    weight_decay: float = 1e-6
    optimizer: str = "sgd"


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with AMX (float32 on other CPUs)
    compile: bool = False  # torch.compile the model (CUDA)
    workers: int = 4  # DataLoader workers of the per-image path and of folder decoding
    threads: int = 0  # torch CPU threads per process (0: OMP_NUM_THREADS if set, else the physical cores available)
    labels: float | None = 0.1  # labeled fraction of the training split
    labels_per_class: int | None = None  # or a count per class
    labels_file: str | None = None  # or a file listing labeled images, one per line
    label_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])  # pipeline
    # photo folders (the folder preset): full = the GPU-sized recipe | cpu = smaller images and batches, an
    # epoch of 1,000 photos in about a minute on 2 cores | auto = cpu without a GPU (saved resolved)
    recipe: str = "full"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Reject values no run can use, naming the key."""
        _check(self.data.image_size > 0, "data.image_size must be > 0")
        _check(0 < self.data.val_fraction < 1, "data.val_fraction must be in (0, 1)")
        _check(self.data.stream in ("auto", "on", "off"), f"data.stream must be auto, on or off (got {self.data.stream!r})")
        _check(self.data.decode in ("workers", "device"), f"data.decode must be workers or device (got {self.data.decode!r})")
        _check(self.data.memory_gb >= 0, "data.memory_gb must be >= 0")
        _check(self.data.cache_size >= 0, "data.cache_size must be >= 0")
        _check(self.data.crop in ("full", "square"), f"data.crop must be full or square (got {self.data.crop!r})")
        _check(self.data.max_pixels > 0, "data.max_pixels must be > 0")
        _check(self.workers >= 0, "workers must be >= 0")
        _check(0 <= self.seed < 2**63, f"seed must be in [0, 2**63) (got {self.seed})")
        _check(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
               f"device {self.device!r} is not a device name; use auto, cpu, cuda or cuda:N")
        _check(self.threads >= 0, "threads must be >= 0 (0: automatic)")
        _check(self.recipe in RECIPES, f"recipe must be auto, cpu or full (got {self.recipe!r})")
        from simclrv2.models.registry import list_encoders

        _check(self.model.model in list_encoders(),
               f"unknown model {self.model.model!r}; choose one of {', '.join(list_encoders())}")
        _check(self.distill.student is None or self.distill.student in list_encoders(),
               f"unknown distill.student {self.distill.student!r}; choose one of {', '.join(list_encoders())}")
        _check(self.model.width > 0, "model.width must be > 0")
        _check(0 <= self.model.sk_ratio < 1, "model.sk_ratio must be in [0, 1)")
        _check(self.model.head_layers >= 0, "model.head_layers must be >= 0")
        _check(self.model.proj_dim >= 1, f"model.proj_dim must be >= 1 (got {self.model.proj_dim})")
        _check(self.model.head_dim is None or self.model.head_dim >= 1,
               f"model.head_dim must be >= 1 or none (got {self.model.head_dim})")
        _check(0 <= self.model.ft_layer <= self.model.head_layers,
               f"model.ft_layer must be in [0, head_layers={self.model.head_layers}]")
        _check(self.aug.color_strength >= 0, "aug.color_strength must be >= 0")
        _check(0 < self.aug.min_scale <= 1, "aug.min_scale must be in (0, 1]")
        _check(self.aug.backend in ("batched", "torchvision"), "aug.backend must be batched or torchvision")
        _check(self.aug.style in ("official", "torchvision"), "aug.style must be official or torchvision")
        _check(self.aug.backend == "batched" or self.aug.style == "torchvision",
               "aug.backend=torchvision is the per-image torchvision reference: it needs aug.style=torchvision")
        if self.labels is not None:
            _check(0 < self.labels <= 1, f"labels={self.labels}: a label fraction must be in (0, 1]")
        if self.labels_per_class is not None:
            _check(self.labels_per_class >= 1, "labels_per_class must be >= 1")
        for f in self.label_fractions:
            _check(0 < f <= 1, f"label_fractions: {f} is not in (0, 1]")
        _check(self.eval.linear in ("fast", "paper"), f"eval.linear must be fast or paper (got {self.eval.linear!r})")
        _check(self.eval.encoder_bn in ("frozen", "batch"),
               f"eval.encoder_bn must be frozen or batch (got {self.eval.encoder_bn!r})")
        for name in ("pretrain", "finetune", "distill", "supervised", "eval"):
            s: OptimConfig = getattr(self, name)
            _check(s.epochs >= 0, f"{name}.epochs must be >= 0")
            _check(s.batch_size >= 2, f"{name}.batch_size must be >= 2 (got {s.batch_size}): BatchNorm and the "
                                      f"contrastive loss need two images per batch")
            _check(s.lr > 0 and math.isfinite(s.lr), f"{name}.lr must be > 0 (got {s.lr})")
            _check(s.weight_decay >= 0, f"{name}.weight_decay must be >= 0")
            _check(s.weight_decay <= 1, f"{name}.weight_decay must be <= 1 (got {s.weight_decay:g}): a step "
                                        f"would remove more than the weights")
            _check(s.warmup_epochs >= 0, f"{name}.warmup_epochs must be >= 0")
            _check(s.warmup_fraction is None or 0 <= s.warmup_fraction <= 1,
                   f"{name}.warmup_fraction must be in [0, 1] or none (got {s.warmup_fraction})")
            _check(s.lr_scaling in ("sqrt", "linear", "none"), f"{name}.lr_scaling must be sqrt, linear or none")
            _check(s.optimizer in ("lars", "sgd", "adamw"), f"{name}.optimizer must be lars, sgd or adamw")
            _check(0 <= s.momentum < 1, f"{name}.momentum must be in [0, 1)")
            _check(s.trust_coefficient > 0, f"{name}.trust_coefficient must be > 0")
        for f, e in self.finetune.epochs_by_labels.items():
            _check(0 < f <= 1 and e >= 0, f"finetune.epochs_by_labels: {f}: {e} needs a fraction in (0, 1] "
                                          f"and epochs >= 0")
        _check(self.pretrain.temperature > 0, f"pretrain.temperature must be > 0 (got {self.pretrain.temperature})")
        _check(self.pretrain.memory_size >= 0, "pretrain.memory_size must be >= 0")
        _check(self.pretrain.knn_k >= 1, f"pretrain.knn_k must be >= 1 (got {self.pretrain.knn_k})")
        _check(self.pretrain.knn_every >= 0, "pretrain.knn_every must be >= 0 (0: no kNN monitor)")
        _check(self.pretrain.knn_temperature > 0, "pretrain.knn_temperature must be > 0")
        _check(0 <= self.pretrain.memory_momentum < 1, "pretrain.memory_momentum must be in [0, 1)")
        _check(self.distill.temperature > 0, f"distill.temperature must be > 0 (got {self.distill.temperature})")
        _check(0 <= self.distill.alpha <= 1, "distill.alpha must be in [0, 1]")
        _check(self.distill.init in ("scratch", "pretrained"), "distill.init must be scratch or pretrained")
        _check(0 <= self.aug.flip <= 1, "aug.flip must be in [0, 1]")
        _check_bounds(self)
        return self


# Upper bounds: what the method can use and what this machine can hold, so that an absurd value is
# one line here rather than an overflow or an allocation failure deep in torch.
INT_MAX = 2**31 - 1  # torch's and the C libraries' int
MAX_FLOAT = 1e30  # float32 reaches 3.4e38; learning rates are multiplied by up to sqrt(INT_MAX) or INT_MAX / 256
MAX_WIDTH, MAX_HEAD_DIM, MAX_HEAD_LAYERS = 64.0, 65_536, 64  # SimCLRv2's largest: 3x, 8192-wide heads, 3 layers
MAX_PIXELS = 178_956_970  # data.files.MAX_PIXELS, PIL's decompression-bomb limit


def machine() -> tuple[int, int]:
    """``(logical CPUs this process may use, bytes of the machine's memory)``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 8 * 2**30
    return max(1, cpus), memory


def _check_bounds(cfg: "Config") -> None:
    """Refuse values beyond what the method or this machine allows (see the constants above)."""
    cpus, memory = machine()
    most = max(64, 4 * cpus)
    _check(cfg.threads <= most, f"threads={cfg.threads} is more than {most} ({cpus} CPUs here; 0 picks them)")
    _check(cfg.workers <= most, f"workers={cfg.workers} is more than {most} ({cpus} CPUs here)")
    m = cfg.model
    _check(m.width <= MAX_WIDTH, f"model.width={m.width:g} is too large (at most {MAX_WIDTH:g})")
    for key in ("proj_dim", "head_dim"):
        value = getattr(m, key)
        _check(value is None or value <= MAX_HEAD_DIM, f"model.{key}={value} is too large (at most {MAX_HEAD_DIM:,})")
    _check(m.head_layers <= MAX_HEAD_LAYERS, f"model.head_layers={m.head_layers} is too large "
                                            f"(at most {MAX_HEAD_LAYERS})")
    params = model_params(m)
    if 8 * params > memory:  # weights and their gradients, float32: a lower bound of training
        raise ConfigError(f"the network (model.{m.model} x{m.width:g}, head {m.head_layers} x "
                          f"{m.head_dim or 'features'} -> {m.proj_dim}) would have about {params / 1e9:,.1f}G "
                          f"parameters, more than this machine's {memory / 2**30:,.0f} GiB can train")
    # the smallest training step (2 images, 2 views, float32): its input and the stem's output, at
    # least a quarter of the positions, 64 x width channels. A lower bound: what it refuses cannot run.
    size = cfg.data.image_size
    step = 4 * 4 * size * size * (3 + 16 * max(m.width, 0.0))
    if step > memory:
        largest = int(math.sqrt(memory / (16 * (3 + 16 * max(m.width, 0.0)))))
        raise ConfigError(f"data.image_size={size} is too large: one training step would need "
                          f"{step / 2**30:,.0f} GiB, this machine has {memory / 2**30:,.0f} GiB "
                          f"(at most about {largest:,} px at width {m.width:g})")
    pixels = max(MAX_PIXELS, memory // 4)
    _check(cfg.data.max_pixels <= pixels, f"data.max_pixels={cfg.data.max_pixels} is more than {pixels:,}: such an "
                                          f"image (4 bytes a pixel) would not fit in this machine's memory")
    _check(cfg.data.memory_gb <= memory / 2**30, f"data.memory_gb={cfg.data.memory_gb:g} is more than this "
                                                 f"machine's {memory / 2**30:,.1f} GiB (0: half of it)")
    for name, value in _flat_numbers(cfg):
        if isinstance(value, int) and name != "seed":
            _check(value <= INT_MAX, f"{name}={value} is too large (at most {INT_MAX:,})")
        elif isinstance(value, float):  # torch computes in float32 (at most 3.4e38), scaled by batch sizes
            _check(abs(value) <= MAX_FLOAT, f"{name}={value:g} is too large (at most {MAX_FLOAT:g})")


# parameters at width 1 and feature width of each encoder (torchvision's ResNets, without the classifier)
_ENCODERS = {"resnet18": (11.2e6, 512), "resnet34": (21.3e6, 512), "resnet50": (23.5e6, 2048),
             "resnet101": (42.5e6, 2048), "resnet152": (58.1e6, 2048)}


def model_params(m: "ModelConfig") -> float:
    """About how many parameters ``m`` has (the encoder scales with width squared, plus the head)."""
    base, features = _ENCODERS.get(m.model, max(_ENCODERS.values()))
    features = features * m.width
    hidden = m.head_dim or features
    return base * m.width ** 2 * (1 + m.sk_ratio * 4) + features * hidden + \
        max(0, m.head_layers - 1) * hidden * hidden + hidden * m.proj_dim


def _flat_numbers(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(section.key, value)`` of every int and float in the config (lists and mappings too)."""
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += _flat_numbers(value, f"{name}.")
            continue
        values = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value] \
            if isinstance(value, list) else [(None, value)]
        for k, v in values:
            out += [(name, x) for x in (k, v) if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


STAGES = ("pretrain", "finetune", "distill", "supervised")
SHARED = ("data", "model", "aug")

# Published hyperparameters per scale. ImageNet: SimCLRv2 paper (Sec. 3.1 and Appendix) and
# google-research/simclr (LARS, tau 0.1, wd 1e-4, 800 epochs at B=4096, fine-tune lr 0.16 at B=1024);
# lr 0.1 x sqrt(B) with warmup over 5% of the epochs (40 of 800): the authors' answer in
# google-research/simclr issue #77 (the README's 0.075 x sqrt(B) is SimCLRv1's); the memory buffer of
# 65,536 keys with a 0.999 moving average and fine-tuning for 60 epochs on 1% of the labels, 30 on 10%:
# the SimCLRv2 paper (Sec. 3.1 and Appendix). No fine-tuning schedule is published for CIFAR-10: its
# preset takes ImageNet's epochs per fraction; digits keeps 100 for both (1% is one batch per epoch).
# CIFAR-10: the official CIFAR-10 command line (google-research/simclr tf2/README.md: ResNet-18 with
# the CIFAR stem, 1000 epochs at B=512, lr 1.0 x B/256 with 10 warmup epochs, wd 1e-4, tau 0.5, colour
# strength 0.5, no blur). Distillation: the pretraining's optimizer and schedule (SimCLRv2 paper, Sec. 4:
# the same learning rate schedule, weight decay and batch size as pretraining, 400 epochs on ImageNet;
# warmup the same share of the epochs, 5% and 1%), temperature 1 for teacher and student, the
# distillation loss alone (alpha 1), as the paper and the official distillation colab; the student's
# classifier is trained under LARS with weight decay, as in that colab (train/distill.py).
# ImageNet has no kNN monitor during pretraining (knn_every=0): one pass embeds the 1.28M training
# images (a sixth of an epoch's compute), keeps their 2048-d features in host memory on every rank
# (10.5 GB) and scores 50,000 queries against them on the CPU; measure kNN and linear accuracy once, on
# the final checkpoint, with ``simclrv2 evaluate``.
# Digits: the embedded default, sized so the whole pipeline runs in minutes on CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {
        "data": {"dataset": "folder", "image_size": 224},
        "model": {"model": "resnet50", "width": 1.0, "cifar_stem": False},
        "aug": {"color_strength": 1.0, "blur": True, "style": "official"},
        "pretrain": {"epochs": 800, "batch_size": 4096, "lr": 0.1, "lr_scaling": "sqrt",
                     "warmup_epochs": 40, "warmup_fraction": 0.05, "weight_decay": 1e-4, "temperature": 0.1,
                     "memory_size": 65536, "memory_momentum": 0.999,
                     "knn_every": 0},  # no kNN monitor: each pass embeds all 1.28M training images (see above)
        "finetune": {"epochs": 60, "batch_size": 1024, "lr": 0.005, "lr_scaling": "sqrt",
                     "weight_decay": 0.0, "epochs_by_labels": {0.01: 60, 0.1: 30}},
        "distill": {"epochs": 400, "batch_size": 4096, "lr": 0.1, "lr_scaling": "sqrt",
                    "warmup_epochs": 20, "weight_decay": 1e-4, "temperature": 1.0, "alpha": 1.0},
        "supervised": {"epochs": 90, "batch_size": 1024, "lr": 0.1, "lr_scaling": "linear",
                       "optimizer": "sgd", "weight_decay": 1e-4, "warmup_epochs": 5},
    },
    "cifar10": {
        "data": {"dataset": "cifar10", "image_size": 32},
        "model": {"model": "resnet18", "width": 1.0, "cifar_stem": True},
        "aug": {"color_strength": 0.5, "blur": False, "style": "official"},
        "pretrain": {"epochs": 1000, "batch_size": 512, "lr": 1.0, "lr_scaling": "linear",
                     "warmup_epochs": 10, "weight_decay": 1e-4, "temperature": 0.5},
        "finetune": {"epochs": 60, "batch_size": 256, "lr": 0.005, "lr_scaling": "sqrt",
                     "weight_decay": 0.0, "epochs_by_labels": {0.01: 60, 0.1: 30}},
        "distill": {"epochs": 100, "batch_size": 512, "lr": 1.0, "lr_scaling": "linear",
                    "warmup_epochs": 1, "weight_decay": 1e-4, "temperature": 1.0, "alpha": 1.0},
        "supervised": {"epochs": 60, "batch_size": 256, "lr": 0.1, "lr_scaling": "linear",
                       "optimizer": "sgd", "weight_decay": 5e-4},
        # the README's CIFAR-10 linear head (google-research/simclr issue #5)
        "eval": {"epochs": 100, "batch_size": 512, "lr": 0.1, "lr_scaling": "linear", "weight_decay": 0.0},
    },
    "digits": {
        "threads": 1,  # the network is too small to gain from more, and one thread repeats a run exactly
        "labels": 0.1,
        "label_fractions": [0.01, 0.1],
        "data": {"dataset": "digits", "image_size": 8, "val_fraction": 0.2},
        "model": {"model": "resnet18", "width": 0.25, "cifar_stem": True, "head_layers": 3},
        # flip 0: a mirrored digit is another digit; style torchvision: the 8 px recipe was tuned on it
        "aug": {"color_strength": 0.5, "blur": False, "min_scale": 0.3, "flip": 0.0, "style": "torchvision"},
        "pretrain": {"epochs": 60, "batch_size": 256, "lr": 1.0, "lr_scaling": "linear",
                     "warmup_epochs": 5, "weight_decay": 1e-4, "temperature": 0.2,
                     "knn_every": 10, "knn_k": 50},
        "finetune": {"epochs": 100, "batch_size": 32, "lr": 0.01, "lr_scaling": "sqrt",
                     "weight_decay": 0.0},
        "distill": {"epochs": 60, "batch_size": 128, "lr": 1.0, "lr_scaling": "linear",
                    "warmup_epochs": 3, "weight_decay": 1e-4, "temperature": 1.0, "alpha": 1.0},
        "supervised": {"epochs": 100, "batch_size": 32, "lr": 0.4, "lr_scaling": "linear",
                       "optimizer": "sgd", "weight_decay": 5e-4},
        "eval": {"epochs": 90, "batch_size": 256, "lr": 0.1, "lr_scaling": "linear", "weight_decay": 0.0},
    },
}


# Photographs in a folder of your own (``--data DIR`` without ``--preset``): SimCLR's augmentation at
# full colour strength, a CIFAR-like small-batch recipe, and the resolution and network that
# ``folder_defaults`` picks from the images found (the 96 px here is used only when no folder is known).
PRESETS["folder"] = {
    "recipe": "auto",
    "data": {"dataset": "folder", "image_size": 96, "val_fraction": 0.1},
    "model": {"model": "resnet18", "width": 1.0, "cifar_stem": False},
    "aug": {"color_strength": 1.0, "blur": None, "min_scale": 0.08, "flip": 0.5, "style": "official"},
    "pretrain": {"epochs": 200, "batch_size": 256, "lr": 0.075, "lr_scaling": "sqrt",
                 "warmup_epochs": 10, "warmup_fraction": 0.05, "weight_decay": 1e-4, "temperature": 0.2,
                 "knn_every": 10, "knn_k": 20},
    "finetune": {"epochs": 60, "batch_size": 64, "lr": 0.005, "lr_scaling": "sqrt", "weight_decay": 0.0},
    "distill": {"epochs": 100, "batch_size": 256, "lr": 0.075, "lr_scaling": "sqrt",
                "warmup_epochs": 5, "warmup_fraction": 0.05, "weight_decay": 1e-4, "temperature": 1.0,
                "alpha": 1.0},
    "supervised": {"epochs": 100, "batch_size": 64, "lr": 0.1, "lr_scaling": "linear",
                   "optimizer": "sgd", "weight_decay": 5e-4},
}

FOLDER_MAX_SIZE = 224  # the paper's resolution: larger photographs are downscaled to it
FOLDER_LARGE = 50_000  # from this many images at 96 px and more, ResNet-50 (the paper's smallest model)
RECIPES = ("auto", "cpu", "full")
# recipe=cpu: what changes from the full folder recipe. Measured on 1,000 Imagenette photos (160 px) with
# one thread: ResNet-18 x1 at 96 px and batch 64 costs 47 CPU-seconds per 1,000 pretraining images (two
# views, forward and backward), 1.8 GB; at 160 px 127 CPU-seconds (2.7x), and the full recipe's batch of
# 256 held 4.9 GB.
FOLDER_CPU_MAX_SIZE = 96
FOLDER_CPU = {"pretrain": {"batch_size": 64}, "distill": {"batch_size": 64}}


def resolve_recipe(recipe: str, device: str) -> str:
    """``auto`` becomes ``cpu`` unless ``device`` is (or, for ``auto``, finds) a GPU; others are kept."""
    if recipe != "auto":
        return recipe
    if device.startswith("cuda"):
        return "full"
    if device == "auto":
        import torch

        return "full" if torch.cuda.is_available() else "cpu"
    return "cpu"


def folder_defaults(short_sides: list[int], num_images: int, recipe: str = "full") -> dict[str, Any]:
    """Resolution and network for a folder of ``num_images`` whose sampled images have these short sides.

    ``image_size``: the median short side, at most 224 px, rounded down to a multiple of 8 (never
    upsampled beyond what the images hold); a CIFAR stem (3x3, no max-pool) below 64 px, where the
    ImageNet stem would shrink the image 4x before the first block; ResNet-50 for ImageNet-sized
    folders of 96 px and more, ResNet-18 otherwise. ``recipe="cpu"``: at most 96 px, ResNet-18, and
    the batches of ``FOLDER_CPU``.
    """
    if not short_sides:
        return dict(FOLDER_CPU) if recipe == "cpu" else {}
    median = sorted(short_sides)[len(short_sides) // 2]
    size = max(8, min(median, FOLDER_MAX_SIZE) // 8 * 8)
    model = "resnet50" if num_images >= FOLDER_LARGE and size >= 96 else "resnet18"
    if recipe == "cpu":
        size, model = min(size, FOLDER_CPU_MAX_SIZE), "resnet18"
    values = {"data": {"image_size": size}, "model": {"model": model, "cifar_stem": size < 64}}
    return {**values, **FOLDER_CPU} if recipe == "cpu" else values


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset(name: str) -> Config:
    """The named preset as a Config."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return merge(Config(), PRESETS[name])


def merge(cfg: Config, values: dict[str, Any], where: str = "config") -> Config:
    """A copy of ``cfg`` with the nested dict ``values`` applied (unknown keys are errors)."""
    cfg = copy.deepcopy(cfg)
    _apply(cfg, values, where)
    finetune = values.get("finetune") if isinstance(values, dict) else None
    if isinstance(finetune, dict) and "epochs" in finetune and "epochs_by_labels" not in finetune:
        cfg.finetune.epochs_by_labels = {}  # the epochs asked for last win over a preset's table
    for name in STAGES + ("eval",):  # likewise warmup epochs asked for last win over a preset's fraction
        section = values.get(name) if isinstance(values, dict) else None
        if isinstance(section, dict) and "warmup_epochs" in section and "warmup_fraction" not in section:
            getattr(cfg, name).warmup_fraction = None
    return cfg


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}{_did_you_mean(key, fields)}; "
                              f"valid keys: {', '.join(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if isinstance(value, str) and optional and value.lower() in ("none", "null", ""):
        return None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: may not be empty")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce(value, args[0], where)
    if origin is dict:  # a mapping, or "key:value,key:value" on the command line
        if isinstance(value, str):
            pairs = [p.split(":", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ConfigError(f"{where}: expected key:value pairs separated by commas, got {value!r}")
            value = dict(pairs)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(hint)
        return {_coerce(k, key_type, where): _coerce(v, value_type, where) for k, v in value.items()}
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in items]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            number = float(value) if isinstance(value, str) and "e" in value.lower() else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        if hint is float:
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{where}: {value!r} is not a finite number")
            return number
        if hint is str:
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.object[e.start]:#x} at offset {e.start}); "
                          f"save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return values


def parse_overrides(items: list[str], stage: str | None = None) -> dict[str, Any]:
    """Turn ``["epochs=10", "model=resnet50", "finetune.lr=0.1"]`` into a nested dict.

    Flat keys resolve to the stage's section first, then the top level, then the shared sections.
    """
    out: dict[str, Any] = {}
    top = {f.name for f in dataclasses.fields(Config)}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if "." in key:
            path = key.split(".")
        else:
            path = None
            sections = ([stage] if stage in STAGES else []) + [None] + list(SHARED)
            for section in sections:
                if section is None:
                    if key in top and key not in STAGES + SHARED:
                        path = [key]
                        break
                elif key in {f.name for f in dataclasses.fields(getattr(Config(), section))}:
                    path = [section, key]
                    break
            if path is None:
                owners = [st for st in STAGES if key in {f.name for f in dataclasses.fields(getattr(Config(), st))}]
                if len(owners) == 1:
                    path = [owners[0], key]
                elif owners:
                    raise ConfigError(f"config key {key!r} is ambiguous here: say which stage, e.g. "
                                      f"{', '.join(f'{o}.{key}' for o in owners)}")
                else:
                    flat = (top - set(STAGES + SHARED + ("eval",))).union(
                        *({f.name for f in dataclasses.fields(getattr(Config(), s))} for s in STAGES + SHARED))
                    raise ConfigError(f"unknown config key {key!r}{_did_you_mean(key, flat)}; use section.key, "
                                      f"e.g. pretrain.lr (sections: {', '.join(SHARED + STAGES)})")
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def _did_you_mean(key: str, known: typing.Iterable[str]) -> str:
    """`` (did you mean 'epochs'?)`` for the known key closest to a mistyped one, else nothing."""
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_config(preset_name: str | None = None, config_file: str | None = None,
                 overrides: list[str] | None = None, stage: str | None = None) -> Config:
    """Preset, then YAML file, then command-line overrides; validated."""
    cfg = preset(preset_name) if preset_name else Config()
    if config_file:
        cfg = merge(cfg, load_yaml(config_file), where=str(config_file))
    if overrides:
        cfg = merge(cfg, parse_overrides(overrides, stage), where="override")
    return cfg.validate()


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config saved with ``to_dict`` (e.g. from a checkpoint)."""
    return merge(Config(), values, where="saved config")


def save_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
