"""Features of a dataset under a trained network, saved as safetensors for downstream use.

A pretrain checkpoint gives encoder features (or the output of projection-head layer ``k``); a
classifier checkpoint gives the input of its linear classifier (``forward_features``). Each split
is written as ``{split}_features`` / ``{split}_labels`` (or plain ``features`` / ``labels`` when
only one split is written), with the class names and image names in the file's metadata.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from simclrv2 import checkpoint
from simclrv2.config import DataConfig, from_dict
from simclrv2.data import datasets
from simclrv2.inference import InferenceError
from simclrv2.models.networks import build_network
from simclrv2.core.batched import infer

__all__ = ["SPLITS", "load_network", "feature_fn", "data_config", "extract", "embed_splits", "save_features"]

SPLITS = ("train", "val", "unlabeled")


def load_network(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Any checkpoint (pretrain or classifier) as a network in eval mode, with its metadata."""
    tensors, meta = checkpoint.load(path)
    net = build_network(meta["arch"])
    checkpoint.load_weights(net, tensors, source=f"checkpoint {path}")
    return net.eval(), meta


def feature_fn(net: nn.Module, meta: dict[str, Any], layer: int | None = None) -> Callable[[Tensor], Tensor]:
    """The function mapping images to features.

    ``layer`` selects ``model.head(encoder(x))[layer]`` of a pretrain network (0 = encoder output,
    ``head_layers`` = the projection); ``None`` means encoder features for a pretrain checkpoint and
    ``forward_features`` (what the linear classifier sees) for a classifier.
    """
    if meta.get("kind") == "classifier":
        if layer is not None:
            raise InferenceError("--layer applies to pretrain checkpoints; a classifier gives the features "
                                 "its linear layer sees")
        return net.forward_features
    if layer is None:
        return net.encoder.forward_features
    num_layers = net.head.num_layers
    if not 0 <= layer <= num_layers:
        raise InferenceError(f"--layer {layer}: this checkpoint's projection head has {num_layers} layer(s); "
                             f"choose 0 (encoder) to {num_layers} (projection)")
    return lambda x: net.head(net.encoder(x))[layer]


def data_config(meta: dict[str, Any], path: str | None = None, dataset: str | None = None) -> DataConfig:
    """The checkpoint's data config with ``path``/``dataset`` overridden, at the network's image size.

    A path without a dataset kind means an image folder when the checkpoint was trained on the
    bundled digits (which have no path), as on the training command line.
    """
    saved = from_dict(meta.get("config", {})).data
    cfg = replace(saved, image_size=int(meta.get("image_size", saved.image_size)))
    if path is not None:
        cfg.path = path
        if dataset is None and cfg.dataset == "digits":
            cfg.dataset = "folder"
    if dataset is not None:
        cfg.dataset = dataset
    return cfg


@torch.no_grad()
def extract(fn: Callable[[Tensor], Tensor], images: Tensor, device: torch.device, batch_size: int = 256,
            desc: str = "embed", show_progress: bool = True) -> Tensor:
    """``fn`` applied to the evaluation views of ``images`` in batches (the official ``preprocess_for_eval``:
    :func:`simclrv2.core.batched.infer`), float32 on CPU out, with a progress bar."""
    from tqdm import tqdm

    chunks = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not show_progress, file=sys.stderr,
              leave=False, dynamic_ncols=True) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            chunks.append(infer(fn, chunk, device, batch_size=batch_size, amp=False))
            bar.update(len(chunk))
    return torch.cat(chunks) if chunks else torch.empty(0)


def _chosen_splits(splits: datasets.Splits, names: Sequence[str] | None) -> list[tuple[str, datasets.ImageSet]]:
    """The non-empty splits asked for; by default train and val, or the unlabeled images when the
    data has no labels (a flat folder)."""
    if names is not None:
        unknown = [n for n in names if n not in SPLITS]
        if unknown:
            raise InferenceError(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}")
    wanted = list(names) if names is not None else ["train", "val"]
    parts = [(n, getattr(splits, n)) for n in wanted if getattr(splits, n) is not None and len(getattr(splits, n))]
    if not parts and names is None and splits.unlabeled is not None and len(splits.unlabeled):
        parts = [("unlabeled", splits.unlabeled)]
    if not parts:
        raise InferenceError(f"the data has no images in the split(s) {', '.join(wanted)}")
    return parts


def embed_splits(net: nn.Module, meta: dict[str, Any], data: DataConfig | None = None, layer: int | None = None,
                 device: torch.device | str = "cpu", batch_size: int = 256, split_names: Sequence[str] | None = None,
                 workers: int = 4, show_progress: bool = True, source: str | Path = ""
                 ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Features and labels of each split of ``data`` (default: the checkpoint's data) under the
    network of a checkpoint (see :func:`load_network`; ``source`` names it in the metadata).

    Returns the tensors and the string metadata :func:`save_features` writes.
    """
    device = torch.device(device)
    fn = feature_fn(net.eval().to(device), meta, layer)
    data = data or data_config(meta)
    splits = datasets.load(data, workers)
    parts = _chosen_splits(splits, split_names)
    single = len(parts) == 1
    tensors: dict[str, Tensor] = {}
    names: dict[str, list[str]] = {}
    for split, images in parts:
        prefix = "" if single else f"{split}_"
        tensors[f"{prefix}features"] = extract(fn, images.images, device, batch_size, f"embed {split}", show_progress)
        tensors[f"{prefix}labels"] = images.labels.clone()
        names[split] = images.names
    metadata = {
        "classes": json.dumps(splits.classes), "splits": json.dumps([s for s, _ in parts]),
        "names": json.dumps(names), "checkpoint": str(source), "kind": str(meta.get("kind")),
        "stage": str(meta.get("stage")), "layer": "default" if layer is None else str(layer),
        "dataset": data.dataset, "data_path": str(data.path), "image_size": str(data.image_size),
    }
    return tensors, metadata


def save_features(out: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` (contiguous, on CPU) and ``metadata`` to a safetensors file, atomically."""
    out = Path(out)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    checkpoint.atomic_write(out, lambda p: save_file(tensors, str(p), metadata=metadata))
    return out
