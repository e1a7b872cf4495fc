"""The checkpoint format: one directory per save, published by one atomic rename.

A checkpoint named ``RUN/last`` is a symbolic link to a directory ``RUN/.last.<id>/`` holding

- ``model.safetensors``: the network's weights, with the metadata JSON in its header;
- ``meta.json``: the same metadata, readable (stage, epoch, metrics, resolved config, architecture);
- ``state.pt``: optimizer and RNG state for resuming (``last`` only; tensors and plain containers,
  read with ``torch.load(weights_only=True)``).

A save writes a new directory, fsyncs it, then replaces the link in one ``rename``: whenever a
process dies, ``RUN/last`` is the complete previous save or the complete new one. Every part records
the save's id, checked on load, so parts of different saves are never mixed. Nothing that is not
finite is ever saved. ``RUN/last.safetensors`` (the single-file form of earlier versions) is still
read, and is a valid spelling of ``RUN/last``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from simclrv2.errors import NonFiniteError, OutputError, UserError

FORMAT = "simclrv2/2"
WEIGHTS, META, STATE = "model.safetensors", "meta.json", "state.pt"


class CheckpointError(UserError):
    """The checkpoint is missing, unreadable, incomplete, or does not fit the network."""


# ---------------------------------------------------------------------------------------------- writing

_kills: dict[str, int] = {}


def kill_point(name: str) -> None:
    """Fault injection for tests: ``SIMCLRV2_KILL_AT=NAME:N`` SIGKILLs this process the N-th time it
    passes point ``NAME`` (e.g. ``last:weights:2``). Inert when the variable is unset."""
    spec = os.environ.get("SIMCLRV2_KILL_AT")
    if not spec:
        return
    point, _, n = spec.rpartition(":")
    if point == name:
        _kills[name] = _kills.get(name, 0) + 1
        if _kills[name] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_output(path: Path) -> None:
    """Refuse an output path that is a directory or lies under a file, before any work is done."""
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{path} is a directory; give a file name as the output")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot write {path}: {parent} is a file, not a directory")


def _follow_umask(path: Path) -> None:
    """Give ``path`` the mode ``open`` would (some writers, e.g. safetensors, create files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: readers never see a partial file.
    The file's mode follows the umask, as that of any file made with ``open``."""
    path = Path(path)
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        write(tmp)
        _follow_umask(tmp)
        _fsync(tmp)
        kill_point(f"write:{path.name}")
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    atomic_write(Path(path), lambda p: p.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def non_finite(values: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested structure that hold NaN or inf."""
    if isinstance(values, Tensor):
        return [prefix] if values.is_floating_point() and not torch.isfinite(values).all() else []
    if isinstance(values, dict):
        return [n for k, v in values.items() for n in non_finite(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(values, (list, tuple)):
        return [n for i, v in enumerate(values) for n in non_finite(v, f"{prefix}[{i}]")]
    return []


def save(stem: str | Path, model: nn.Module, meta: dict[str, Any], train_state: dict | None = None) -> Path:
    """Write checkpoint ``stem`` (e.g. ``run/last``) as one unit; refuse anything non-finite."""
    stem = Path(stem)
    tensors = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    bad = non_finite(tensors) + non_finite(train_state or {}, "training state")
    if bad:
        raise NonFiniteError(f"not saving {stem}: {len(bad)} tensor(s) hold NaN or inf ({', '.join(bad[:3])}); "
                             f"training diverged (lower the learning rate?); the last good checkpoint is kept")
    save_id = secrets.token_hex(6)
    parts = [WEIGHTS, META] + ([STATE] if train_state is not None else [])
    meta = {"format": FORMAT, **meta, "save_id": save_id, "parts": parts}
    check_output(stem.parent / "x")
    if (stem.is_file() or stem.is_dir()) and not stem.is_symlink() and not (stem / WEIGHTS).is_file():
        raise OutputError(f"cannot save checkpoint {stem}: a file or directory that is not a checkpoint is there")
    stem.parent.mkdir(parents=True, exist_ok=True)
    name = stem.name
    new = stem.parent / f".{name}.{save_id}"
    new.mkdir()
    try:
        kill_point(f"{name}:begin")
        if train_state is not None:
            _write_part(new / STATE, lambda p: _torch_save({**train_state, "save_id": save_id}, p))
            kill_point(f"{name}:state")
        _write_part(new / WEIGHTS, lambda p: save_file(tensors, str(p),
                                                       metadata={"simclrv2": json.dumps(meta, default=str)}))
        kill_point(f"{name}:weights")
        (new / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        kill_point(f"{name}:meta")
        for part in parts:
            _follow_umask(new / part)
            _fsync(new / part)
        _fsync(new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)  # an unfinished save (a full disk): the previous one stays
        raise
    kill_point(f"{name}:publish")
    link = stem.parent / f".{name}.{save_id}.link"
    os.symlink(new.name, link)
    if stem.is_dir() and not stem.is_symlink():  # a copy that followed the link: move it aside first
        stem.rename(stem.parent / f".{name}.{secrets.token_hex(6)}.old")
    os.replace(link, stem)  # the commit point
    _fsync(stem.parent)
    kill_point(f"{name}:published")
    clean(stem)
    kill_point(f"{name}:done")
    return stem


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` into a file we opened: a full disk is then an ``OSError`` (ENOSPC), where
    ``torch.save(path)`` reports it as a RuntimeError ('unexpected pos')."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _write_part(path: Path, write) -> None:
    """``write(path)``, its failures as errors naming the file: an ``OSError`` with the path (one line
    with a hint, see ``simclrv2.cli``), a writer's own error (torch, safetensors) as an OutputError."""
    try:
        write(path)
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    except (RuntimeError, SafetensorError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise OutputError(f"cannot write {path}: {reason}; is the disk full? free some space or choose "
                          f"another --out") from None


def clean(stem: Path) -> None:
    """Remove what earlier saves of ``stem`` left: superseded directories, unfinished ones, links, and
    the single-file form of earlier versions. Only a run's one writer calls this."""
    stem = Path(stem)
    current = os.readlink(stem) if stem.is_symlink() else None
    for p in stem.parent.glob(f".{stem.name}.*"):
        if p.name == current:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if current is not None:
        for suffix in (".safetensors", ".json", ".state.pt"):
            stem.with_name(stem.name + suffix).unlink(missing_ok=True)


def remove(stem: Path) -> None:
    """Delete checkpoint ``stem`` in every form (link, directories, single files)."""
    stem = Path(stem)
    if stem.is_symlink() or stem.is_file():
        stem.unlink()
    elif stem.is_dir():
        shutil.rmtree(stem)
    clean(stem)
    for suffix in (".safetensors", ".json", ".state.pt"):
        stem.with_name(stem.name + suffix).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- reading

def _legacy(stem: Path) -> Path:
    return stem.with_name(stem.name + ".safetensors")


def exists(stem: str | Path) -> bool:
    """Whether ``stem`` names a checkpoint (in either form), complete or not."""
    stem = Path(stem)
    return (stem / WEIGHTS).is_file() or stem.is_symlink() or _legacy(stem).is_file()


def resolve(path: str | Path) -> Path:
    """``run/last``, ``run/last.safetensors`` or ``run`` (meaning ``run/best``, else ``run/last``) -> the stem."""
    path = Path(path)
    if path.suffix == ".safetensors" and not path.is_file():
        path = path.with_suffix("")
    elif path.suffix == ".safetensors":
        return path.with_suffix("")  # single-file form
    if path.is_dir() and not (path / WEIGHTS).is_file() and not (path / META).is_file():
        for name in ("best", "last"):
            if exists(path / name):
                return path / name
        raise CheckpointError(f"no checkpoint (best or last) in {path}")
    if not exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def _files(stem: Path) -> tuple[Path, Path | None, Path]:
    """Weights, readable metadata (None in the single-file form) and training-state files of ``stem``."""
    if (stem / WEIGHTS).is_file() or stem.is_dir():
        return stem / WEIGHTS, stem / META, stem / STATE
    if stem.is_symlink():
        raise CheckpointError(f"checkpoint {stem} points to {os.readlink(stem)}, which is missing")
    return _legacy(stem), None, stem.with_name(stem.name + ".state.pt")


def load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Weights and metadata of a checkpoint, checked to be one complete save. Never unpickles anything."""
    stem = resolve(path)
    file, meta_file, state_file = _files(stem)
    if not file.is_file():
        raise CheckpointError(f"checkpoint {stem} is incomplete: {file.name} is missing")
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {file}: {e}") from None
    if "simclrv2" not in header:
        raise CheckpointError(f"{file} is a safetensors file but not a simclrv2 checkpoint (no metadata)")
    try:
        meta = json.loads(header["simclrv2"])
    except ValueError:
        raise CheckpointError(f"{file}: its simclrv2 metadata is not valid JSON") from None
    if meta_file is not None:
        missing = [p for p in meta.get("parts", []) if not (stem / p).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint {stem} is incomplete: {', '.join(missing)} missing")
        try:
            readable = json.loads(meta_file.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {meta_file}: {e}") from None
        if readable.get("save_id") != meta.get("save_id"):
            raise CheckpointError(f"checkpoint {stem} mixes two saves: {META} is of save "
                                  f"{readable.get('save_id')}, {WEIGHTS} of save {meta.get('save_id')}")
    return tensors, meta


def load_train_state(path: str | Path) -> dict | None:
    """The training state saved with checkpoint ``path`` (None when that save had none, e.g. ``best``),
    checked to belong to the same save as the weights."""
    stem = resolve(path)
    _, meta = load(stem)
    _, meta_file, file = _files(stem)
    if not file.is_file():
        legacy_last = meta_file is None and stem.name == "last" and meta.get("epoch", 0) > 0
        if STATE in meta.get("parts", []) or legacy_last:
            raise CheckpointError(f"the training state of {stem} is missing ({file.name}); the run cannot be "
                                  f"resumed: pass --overwrite to train again from the start")
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(f"cannot read training state {file}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} is not a simclrv2 training state")
    if meta_file is not None and state.get("save_id") != meta.get("save_id"):
        raise CheckpointError(f"{file} belongs to another save or run (save {state.get('save_id')}, weights of "
                              f"save {meta.get('save_id')}); the run cannot be resumed from it")
    if meta_file is None and "epoch" in meta and state.get("epoch") != meta["epoch"]:
        raise CheckpointError(f"{file} is of epoch {state.get('epoch')} but {_legacy(stem).name} of epoch "
                              f"{meta['epoch']}: the checkpoint files are of different saves")
    return state


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
