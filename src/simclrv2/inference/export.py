"""Export a classifier checkpoint to ONNX or TorchScript, with a JSON sidecar describing its input.

The exported network is the classifier in eval mode: input ``images`` float32 ``[B, 3, S, S]`` RGB in
[0, 1] (no mean/std normalisation), any batch size; output ``logits`` float32 ``[B, num_classes]``.
``FILE.json`` records the preprocessing and the class names so the file can be used on its own.

An export is one unit although it is two files: each export has an id, carried inside the model
(ONNX ``metadata_props``, TorchScript extra file, key ``simclrv2``: the sidecar's JSON) and recorded in
``FILE.json``. :func:`check_export` refuses a model whose sidecar is missing or of another export
(a process killed between the two renames). Temporary files that a killed export left beside
``FILE`` are removed by the next export to it.

ONNX uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which needs only
the ``onnx`` package; the dynamo exporter would also need ``onnxscript``. Every export is checked
before it is published: the file is loaded back (onnxruntime, ``torch.jit.load``) and must give the
PyTorch network's logits on a batch of another size; otherwise no file is left at ``out``.
"""

from __future__ import annotations

import json
import re
import secrets
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simclrv2 import checkpoint
from simclrv2.inference import InferenceError
from simclrv2.data.gpu_augment import eval_crop_proportion
from simclrv2.train.classifier import load_classifier

__all__ = ["FORMATS", "ONNX_OPSET", "export_checkpoint", "to_onnx", "to_torchscript", "sidecar", "check_export",
           "carried_sidecar"]

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
NEEDS_EXPORT_EXTRA = ("--format onnx needs the export extra (onnx to write the file, onnxruntime to check it; "
                      "{missing} is not installed): pip install 'simclrv2[export]', or pip install -e '.[export]' "
                      "in a clone; --format torchscript needs nothing more")
KEY = "simclrv2"  # the model's own copy of its sidecar (with the export id)


def sidecar(meta: dict[str, Any], fmt: str, source: str | Path) -> dict[str, Any]:
    """What a consumer of the exported file needs to know to feed it and read its output."""
    size = int(meta["image_size"])
    square = meta.get("config", {}).get("data", {}).get("crop") == "square"
    crop_side = ("rint(0.875 x short side)" if eval_crop_proportion(size) < 1 else
                 "the short side (no 0.875 crop at 32 px and below, as the official code)")
    crop = (f"central square of side {crop_side}, offsets ((H - side + 1) // 2, (W - side + 1) // 2)"
            + (f", cut from the square kept in training: the short side resized to {size} px (bilinear, "
               "antialiased) and centre-cropped" if square else ""))
    return {
        "format": fmt,
        "source_checkpoint": str(source),
        "stage": meta.get("stage"),
        "input": {"name": "images", "dtype": "float32", "shape": ["batch", 3, size, size], "layout": "NCHW"},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", len(meta["classes"])],
                   "note": "unnormalised; apply softmax for probabilities"},
        "preprocessing": {
            "color": "RGB", "image_size": size, "exif_orientation": "applied",
            "kept": "square" if square else "full",  # the training run's data.crop: what the crop is cut from
            "crop": crop,
            "resize": f"crop resized to {size} x {size} px as TensorFlow's tf.image.resize(method='bicubic', "
                      "antialias=False): half-pixel centres, Keys cubic a=-0.5, taps outside the crop weighted 0 "
                      "and the rest renormalised; no antialiasing",
            "range": [0.0, 1.0], "scale": "uint8 / 255 before the resize", "clip": [0.0, 1.0],
            "normalization": None,
            "reference": "data_util.preprocess_for_eval of the official SimCLR TF2 code "
                         "(google-research/simclr, tf2/data_util.py)",
        },
        "classes": list(meta["classes"]),
    }


def _quiet_tracing() -> None:
    """Silence tracer warnings about Python values: the only ones come from the SAME-padding of the
    ImageNet stem, computed from the spatial size, which is fixed (``image_size``) by design."""
    warnings.simplefilter("ignore", torch.jit.TracerWarning)


def opset_range() -> tuple[int, int]:
    """The ONNX opsets the TorchScript-based exporter can write."""
    try:
        from torch.onnx import _constants

        return _constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except (ImportError, AttributeError):
        return 7, 20


def to_onnx(net: nn.Module, example: torch.Tensor, out: Path, opset: int = ONNX_OPSET,
            carried: str | None = None) -> None:
    """ONNX with a dynamic batch axis, via the TorchScript-based exporter; ``carried`` (the sidecar's
    JSON) goes into the model's ``metadata_props`` under ``simclrv2``."""
    try:
        import onnx
    except ImportError:
        raise InferenceError(NEEDS_EXPORT_EXTRA.format(missing="onnx")) from None
    low, high = opset_range()
    if not low <= opset <= high:
        raise InferenceError(f"--opset {opset} cannot be exported: choose an opset in [{low}, {high}] "
                             f"(default {ONNX_OPSET})")
    with warnings.catch_warnings():
        _quiet_tracing()
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is deprecated, not removed
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)  # harmless, internal
        torch.onnx.export(net, (example,), str(out), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    if carried is not None:
        model = onnx.load(str(out))
        model.metadata_props.add(key=KEY, value=carried)
        onnx.save(model, str(out))


def to_torchscript(net: nn.Module, example: torch.Tensor, out: Path, carried: str | None = None) -> None:
    """A traced TorchScript module (the network has no data-dependent control flow); ``carried`` (the
    sidecar's JSON) is stored as its extra file ``simclrv2``."""
    with warnings.catch_warnings():
        _quiet_tracing()
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in recent torch, still works
        with torch.no_grad():
            traced = torch.jit.trace(net, example)
        torch.jit.save(traced, str(out), _extra_files={KEY: carried} if carried is not None else {})


def verify(fmt: str, path: Path, net: nn.Module, size: int) -> None:
    """Load the exported file back and compare its logits with the network's on a batch of 3."""
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x).numpy()
    try:
        if fmt == "onnx":
            try:
                import onnxruntime as ort
            except ImportError:
                raise InferenceError(NEEDS_EXPORT_EXTRA.format(missing="onnxruntime")) from None
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(["logits"], {"images": x.numpy()})[0]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path))
            with torch.no_grad():
                got = module(x).numpy()
    except InferenceError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the runtime says, the file is unusable
        raise InferenceError(f"the exported {fmt} file does not load in its runtime ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); nothing was written") from None
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
        diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("nan")
        raise InferenceError(f"the exported {fmt} file computes other logits than the checkpoint (shape "
                             f"{got.shape} vs {expected.shape}, max difference {diff:.3g}); nothing was written")


def export_checkpoint(ckpt: str | Path, fmt: str, out: str | Path, opset: int = ONNX_OPSET) -> tuple[Path, Path]:
    """Export classifier ``ckpt`` to ``out`` in format ``fmt``; write ``out.json``; return both paths."""
    if fmt not in FORMATS:
        raise InferenceError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    net, meta = load_classifier(ckpt)
    net = net.float().cpu().eval()
    size = int(meta["image_size"])
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    checkpoint.check_output(out)
    info = out.with_name(out.name + ".json")
    checkpoint.check_output(info)
    record = {**sidecar(meta, fmt, ckpt), "export_id": secrets.token_hex(8)}
    carried = json.dumps(record)

    def write(tmp: Path) -> None:
        to_onnx(net, example, tmp, opset, carried) if fmt == "onnx" else to_torchscript(net, example, tmp, carried)
        verify(fmt, tmp, net, size)
        if (carried_sidecar(tmp, fmt) or {}).get("export_id") != record["export_id"]:
            raise InferenceError(f"the exported {fmt} file does not carry its export id; nothing was written")

    remove_leftovers(out)
    checkpoint.atomic_write(out, write)
    checkpoint.kill_point("export:model")  # a kill here leaves a model the old sidecar does not match
    checkpoint.write_json(info, record)
    return out, info


def remove_leftovers(out: Path) -> None:
    """Remove the temporary files (``.NAME.<hex>.tmp``, ``.NAME.json.<hex>.tmp``) that exports to ``out``
    killed before their rename left beside it."""
    pattern = re.compile(rf"\.{re.escape(out.name)}(\.json)?\.[0-9a-f]{{8}}\.tmp")
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)


def carried_sidecar(path: str | Path, fmt: str) -> dict[str, Any] | None:
    """The sidecar an exported file carries inside (None when it carries none: an older export)."""
    path = Path(path)
    try:
        if fmt == "torchscript":
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.split("/", 1)[-1] == f"extra/{KEY}"]
                text = z.read(names[0]).decode() if names else None
        else:
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            text = next((p.value for p in model.metadata_props if p.key == KEY), None)
        return None if text is None else json.loads(text)
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, ImportError) as e:
        raise InferenceError(f"cannot read {path} as an exported {fmt} file ({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001 - onnx's DecodeError and the like: the file is not a model
        raise InferenceError(f"cannot read {path} as an exported {fmt} file ({type(e).__name__})") from None


def check_export(path: str | Path) -> dict[str, Any]:
    """The sidecar of exported file ``path``, checked to describe this very file (same export id):
    what a consumer calls before trusting ``FILE.json``."""
    path = Path(path)
    info = path.with_name(path.name + ".json")
    if not path.is_file():
        raise InferenceError(f"exported file not found: {path}")
    if not info.is_file():
        raise InferenceError(f"{path} has no sidecar {info.name} (an export that did not finish); export it again")
    try:
        record = json.loads(info.read_text())
        fmt = record["format"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InferenceError(f"cannot read {info} ({type(e).__name__}: {e}); export again") from None
    if fmt not in FORMATS:
        raise InferenceError(f"{info} names an unknown format {fmt!r}; export again")
    carried = carried_sidecar(path, fmt)
    if carried is None:
        raise InferenceError(f"{path} carries no export id (an export of an older version); export it again")
    if carried.get("export_id") != record.get("export_id"):
        raise InferenceError(f"{info.name} describes another export than {path.name} (export "
                             f"{record.get('export_id')} vs {carried.get('export_id')}, an export that did not "
                             f"finish); export again")
    return record
