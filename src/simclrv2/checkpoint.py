"""The checkpoint format: weights in safetensors, metadata in JSON, training state beside them.

A checkpoint named ``RUN/last`` is three files written atomically (temporary file, fsync, rename):

- ``RUN/last.safetensors``: the network's weights, with the metadata JSON in its header;
- ``RUN/last.json``: the same metadata, readable (stage, epoch, metrics, resolved config, architecture);
- ``RUN/last.state.pt``: optimizer and RNG state for resuming (tensors and plain containers only,
  read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

FORMAT = "simclrv2/1"


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable, or does not fit the network."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    atomic_write(Path(path), lambda p: p.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def save(stem: str | Path, model: nn.Module, meta: dict[str, Any], train_state: dict | None = None) -> Path:
    """Write checkpoint ``stem`` (e.g. ``run/last``); the training state first, the weights last."""
    stem = Path(stem)
    meta = {"format": FORMAT, **meta}
    if train_state is not None:
        atomic_write(stem.with_suffix(".state.pt"), lambda p: torch.save(train_state, p))
    tensors = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    header = {"simclrv2": json.dumps(meta, default=str)}
    atomic_write(stem.with_suffix(".safetensors"), lambda p: save_file(tensors, str(p), metadata=header))
    write_json(stem.with_suffix(".json"), meta)
    return stem


def resolve(path: str | Path) -> Path:
    """``run/last``, ``run/last.safetensors`` or ``run`` (meaning ``run/best``, else ``run/last``) -> the stem."""
    path = Path(path)
    if path.suffix == ".safetensors":
        path = path.with_suffix("")
    if path.is_dir():
        for name in ("best", "last"):
            if (path / f"{name}.safetensors").is_file():
                return path / name
        raise CheckpointError(f"no checkpoint (best.safetensors or last.safetensors) in {path}")
    if not path.with_suffix(".safetensors").is_file():
        raise CheckpointError(f"checkpoint not found: {path}.safetensors")
    return path


def load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Weights and metadata of a checkpoint. Never unpickles anything."""
    stem = resolve(path)
    file = stem.with_suffix(".safetensors")
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {file}: {e}") from None
    if "simclrv2" not in header:
        raise CheckpointError(f"{file} is a safetensors file but not a simclrv2 checkpoint (no metadata)")
    return tensors, json.loads(header["simclrv2"])


def load_train_state(path: str | Path) -> dict | None:
    file = resolve(path).with_suffix(".state.pt")
    if not file.is_file():
        return None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(f"cannot read training state {file}: {e}") from None


def load_weights(model: nn.Module, tensors: dict[str, Tensor], source: str = "checkpoint",
                 prefix: str = "") -> None:
    """Load ``tensors`` (keys under ``prefix``) into ``model``, failing with a readable account of
    missing/unexpected keys and shape mismatches."""
    model = _unwrap(model)
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit this network"]
        if missing:
            lines.append(f"  {len(missing)} missing key(s): {', '.join(missing[:5])}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}")
        if shapes:
            lines.append(f"  {len(shapes)} shape mismatch(es): {'; '.join(shapes[:3])}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(tensors)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP
