"""The public Python API: load a checkpoint of ours and use it in your own code, or build the
networks for a training loop of your own.

    import simclrv2

    model = simclrv2.load("runs/finetune")              # a run directory, RUN/best, RUN/last, OUT/classifier
    probs = model.predict_proba(["cat.jpg", "dog.png"])  # float32 [2, len(model.classes)]
    feats = model.features("photos/")                    # one row per file of simclrv2.list_images("photos/")

Images get the evaluation preprocessing of ``simclrv2 predict`` and ``simclrv2 embed`` through the
same functions (:func:`simclrv2.inference.predict.eval_views`, :func:`~simclrv2.core.batched.infer`),
so the results equal theirs on the same files, device and batch size. The names exported by
``simclrv2`` (its ``__all__``) are the public API; everything else may change.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from simclrv2 import checkpoint
from simclrv2.config import ModelConfig
from simclrv2.core.batched import infer
from simclrv2.core.runtime import resolve_device
from simclrv2.data.datasets import DataError
from simclrv2.inference import InferenceError, embed, predict
from simclrv2.inference.predict import Prediction
from simclrv2.models.networks import Classifier, SimCLRModel, build_pretrain_model, classifier_from

__all__ = ["Model", "Prediction", "load", "list_images", "build_simclr", "build_classifier"]

#: What the image-taking methods accept: a file or folder, a uint8 image tensor ``[3, H, W]`` or
#: batch ``[B, 3, H, W]``, or a list of files, folders and ``[3, H, W]`` tensors.
Images = Union[str, Path, Tensor, Sequence[Union[str, Path, Tensor]]]

IMPORTED = ("classifier", "pretrain")  # the checkpoints ``simclrv2 import-tf`` writes under OUT


def load(path: str | Path, device: str | torch.device = "auto") -> "Model":
    """Load a checkpoint of ours for use: a run directory (its ``best``, else ``last``), ``RUN/best``,
    ``RUN/last``, or what ``simclrv2 import-tf`` wrote (``OUT/pretrain``, ``OUT/classifier``).

    ``device``: ``auto`` (CUDA when available, as the command line), ``cpu``, ``cuda`` or ``cuda:N``.
    Raises a ``ValueError`` subclass (``CheckpointError``, ``ConfigError``) with a one-line reason.
    """
    path = Path(path)
    if path.is_dir() and not checkpoint.exists(path) and not any(checkpoint.exists(path / n) for n in ("best", "last")):
        held = [str(path / n) for n in IMPORTED if checkpoint.exists(path / n)]
        if held:
            raise checkpoint.CheckpointError(f"{path} holds the checkpoints {', '.join(held)}: load one of them")
    stem = checkpoint.resolve(path)
    network, meta = embed.load_network(stem)
    return Model(network, meta, stem, device)


def list_images(*paths: str | Path) -> list[Path]:
    """The image files named by ``paths`` in the order the API reads them: files as given, folders
    searched recursively in sorted order (as ``simclrv2 predict`` does). Rows of
    :meth:`Model.features` for a folder are in this order."""
    return predict.collect_images(paths)


class Model:
    """A checkpoint loaded for use (see :func:`load`).

    ``network`` is a plain ``torch.nn.Module`` in eval mode (a pretrain network's ``forward`` gives
    the projection, a classifier's the logits), taking float32 RGB ``[B, 3, S, S]`` in [0, 1]
    without mean/std normalisation, ``S = image_size``. The methods taking images accept what
    :data:`Images` says: files and folders are decoded as ``predict`` decodes them (RGB, EXIF
    orientation applied), uint8 tensors are taken as decoded images; both get the evaluation crop
    (:meth:`preprocess`). They run in batches of ``batch_size`` on ``device`` and return float32 on
    the CPU, one row per image, in order (folders: as :func:`list_images`).
    """

    def __init__(self, network: nn.Module, meta: dict[str, Any], path: Path, device: str | torch.device = "auto"
                 ) -> None:
        self.network = network.eval()
        self.meta = meta
        self.path = Path(path)
        self.device = torch.device("cpu")
        self.to(device)

    # ------------------------------------------------------------------------------------ what it is

    @property
    def kind(self) -> str:
        """``pretrain`` (encoder + projection head) or ``classifier`` (encoder + linear classifier)."""
        return str(self.meta["kind"])

    @property
    def stage(self) -> str:
        """The stage that wrote it: ``pretrain``, ``finetune``, ``distill``, ``supervised`` or ``import-tf``."""
        return str(self.meta.get("stage"))

    @property
    def classes(self) -> list[str]:
        """A classifier's class names, in the order of its outputs; for a pretrain checkpoint the
        classes of the data it was trained on (``[]`` when none are known)."""
        return list(self.meta.get("classes") or [])

    @property
    def image_size(self) -> int:
        """The side ``S`` of the network's square input."""
        return int(self.meta["image_size"])

    @property
    def encoder(self) -> nn.Module:
        """The ResNet encoder (``forward`` gives pooled features ``[B, num_features]``)."""
        return self.network.encoder

    @property
    def head_layers(self) -> int:
        """How many projection-head layers ``features(layer=k)`` may select (``0 <= k <= head_layers``)."""
        return self.network.head.num_layers if self.kind == "pretrain" else 0

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The evaluation preprocessing's settings: ``image_size``, ``crop`` and ``cap`` (the training
        run's ``data.crop`` and ``data.cache_size``)."""
        return predict.eval_settings(self.meta)

    def to(self, device: str | torch.device) -> "Model":
        """Move the network to ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); returns ``self``."""
        self.device = resolve_device(str(device))
        self.network.to(self.device)
        return self

    def __repr__(self) -> str:
        a = self.meta.get("arch", {})
        return (f"Model(kind={self.kind!r}, stage={self.stage!r}, arch='{a.get('model')} width={a.get('width')} "
                f"sk_ratio={a.get('sk_ratio')}', image_size={self.image_size}, classes={len(self.classes)}, "
                f"device='{self.device}', path='{self.path}')")

    # ------------------------------------------------------------------------------------ using it

    def preprocess(self, images: Images, workers: int = 4) -> Tensor:
        """The evaluation views the network sees, float32 ``[N, 3, S, S]`` in [0, 1] (its input as
        it is): the official ``preprocess_for_eval`` (the central crop of 0.875 x the short side,
        none at ``S`` <= 32, TensorFlow's bicubic resize to ``S``, clip), exactly as ``simclrv2
        predict``. An unreadable file is an error."""
        sources, names = _sources(images)
        views, errors = predict.eval_views(sources, **self.preprocessing, workers=workers)
        _check_readable(errors)
        return views

    @torch.no_grad()
    def features(self, images: Images, layer: int | None = None, batch_size: int = 256, workers: int = 4) -> Tensor:
        """Features ``[N, D]``, as ``simclrv2 embed`` computes them: a pretrain checkpoint's encoder
        features, or with ``layer=k`` the output of projection-head layer ``k`` (0 = encoder,
        ``head_layers`` = the projection); a classifier's input of its linear layer. An unreadable
        file is an error."""
        fn = embed.feature_fn(self.network, self.meta, layer)
        rows = [infer(fn, views, self.device, batch_size=batch_size, amp=False)
                for views, _ in self._batches(images, batch_size, workers, strict=True)]
        return torch.cat(rows) if rows else torch.empty(0)

    @torch.no_grad()
    def predict_proba(self, images: Images, batch_size: int = 256, workers: int = 4) -> Tensor:
        """Class probabilities ``[N, len(classes)]`` (softmax of the logits) of a classifier
        checkpoint, as ``simclrv2 predict`` computes them. An unreadable file is an error."""
        self._need_classifier("predict_proba")
        rows = [predict.probabilities(self.network, views, self.device, batch_size)
                for views, _ in self._batches(images, batch_size, workers, strict=True)]
        return torch.cat(rows) if rows else torch.empty(0, len(self.classes))

    @torch.no_grad()
    def predict(self, images: Images, top: int = 5, batch_size: int = 256, workers: int = 4) -> list[Prediction]:
        """The ``top`` most probable classes of each image (``path``, ``classes``, ``probabilities``),
        what ``simclrv2 predict`` prints; unreadable files are skipped with a warning, as there."""
        self._need_classifier("predict")
        if top < 1:
            raise InferenceError(f"top must be >= 1, got {top}")
        out: list[Prediction] = []
        for views, names in self._batches(images, batch_size, workers, strict=False):
            out += predict.top_classes(predict.probabilities(self.network, views, self.device, batch_size),
                                       self.classes, names, top)
        return out

    def _need_classifier(self, what: str) -> None:
        if self.kind != "classifier":
            raise InferenceError(f"{what} needs a classifier checkpoint; {self.path} is a {self.kind!r} checkpoint "
                                 f"(features() gives its features)")

    def _batches(self, images: Images, batch_size: int, workers: int, strict: bool
                 ) -> Iterator[tuple[Tensor, list[str]]]:
        """Evaluation views of the readable images, ``batch_size`` at a time, with their names: the
        batches ``predict``/``embed`` form from all views at once, decoding one batch at a time."""
        if batch_size < 1:
            raise InferenceError(f"batch_size must be >= 1, got {batch_size}")
        sources, names = _sources(images)
        pending: list[Tensor] = []
        kept: list[str] = []
        for start in range(0, len(sources), batch_size):
            views, errors = predict.eval_views(sources[start:start + batch_size], **self.preprocessing, workers=workers)
            if strict:
                _check_readable(errors)
            for reason in filter(None, errors):
                warnings.warn(f"cannot read image {reason}; skipped", stacklevel=3)
            pending.append(views)
            kept += [n for n, e in zip(names[start:start + batch_size], errors) if e is None]
            ready = torch.cat(pending)
            while len(ready) >= batch_size or (start + batch_size >= len(sources) and len(ready)):
                yield ready[:batch_size], kept[:batch_size]
                ready, kept = ready[batch_size:], kept[batch_size:]
            pending = [ready]


def _sources(images: Images) -> tuple[list[Path | Tensor], list[str]]:
    """``images`` as a list of files and decoded uint8 ``[3, H, W]`` CPU tensors, with a name for each."""
    if isinstance(images, (str, Path)):
        files = list_images(images)
        return list(files), [str(f) for f in files]
    if isinstance(images, Tensor):
        if images.ndim == 3:
            images = images[None]
        _check_tensor(images, 4, "[B, 3, H, W]")
        return list(images.cpu()), [f"<image {i}>" for i in range(len(images))]
    if not isinstance(images, Iterable):
        raise TypeError(f"images must be a path, a folder, a uint8 tensor or a list of them, not "
                        f"{type(images).__name__}")
    items = list(images)
    if all(isinstance(i, (str, Path)) for i in items):
        files = predict.collect_images(items)
        return list(files), [str(f) for f in files]
    sources: list[Path | Tensor] = []
    names: list[str] = []
    for k, item in enumerate(items):
        if isinstance(item, Tensor):
            _check_tensor(item, 3, "[3, H, W]")
            sources.append(item.cpu())
            names.append(f"<image {k}>")
        elif isinstance(item, (str, Path)):
            files = list_images(item)
            sources += files
            names += [str(f) for f in files]
        else:
            raise TypeError(f"images[{k}] is a {type(item).__name__}; give paths or uint8 tensors [3, H, W]")
    return sources, names


def _check_tensor(x: Tensor, ndim: int, shape: str) -> None:
    if x.dtype != torch.uint8:
        raise InferenceError(f"image tensors must be uint8 RGB {shape} (as decoded), got {x.dtype}; float "
                             f"[B, 3, S, S] in [0, 1] is the network's input: call model.network(x)")
    if x.ndim != ndim or x.shape[-3] != 3:
        raise InferenceError(f"image tensors must be uint8 RGB {shape}, got shape {tuple(x.shape)}")


def _check_readable(errors: list[str | None]) -> None:
    bad = [e for e in errors if e is not None]
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s): {'; '.join(bad[:3])}")


# ---------------------------------------------------------------------------------------------- building


def build_simclr(name: str = "resnet50", width: float = 1.0, sk_ratio: float = 0.0, cifar_stem: bool = False,
                 head_layers: int = 3, head_dim: int | None = None, proj_dim: int = 128) -> SimCLRModel:
    """A randomly initialised SimCLRv2 network (official initialisation): the encoder
    ``build_encoder(name, width, sk_ratio, cifar_stem)`` and a projection head of ``head_layers``
    layers (hidden width ``head_dim``, default the encoder's), output ``proj_dim``. ``forward``
    gives the projection (for :func:`~simclrv2.losses.ntxent.nt_xent`), ``.encoder`` the encoder,
    ``.head(h)`` every head layer's output. SimCLRv2's ImageNet model: ``build_simclr("resnet50",
    width=2, sk_ratio=0.0625)``."""
    return build_pretrain_model(ModelConfig(model=name, width=width, sk_ratio=sk_ratio, cifar_stem=cifar_stem,
                                            head_layers=head_layers, head_dim=head_dim, proj_dim=proj_dim))


def build_classifier(simclr: SimCLRModel, num_classes: int, ft_layer: int = 1) -> Classifier:
    """A classifier for fine-tuning ``simclr`` (from :func:`build_simclr` or a loaded pretrain
    :attr:`Model.network`): its encoder and first ``ft_layer`` head layers (shared, not copied; 0 =
    the encoder alone; SimCLRv2 uses 1) and a zero-initialised linear layer to ``num_classes``."""
    if not 0 <= ft_layer <= simclr.head.num_layers:
        raise ValueError(f"ft_layer must be in [0, {simclr.head.num_layers}], got {ft_layer}")
    return classifier_from(simclr, ft_layer, num_classes)
