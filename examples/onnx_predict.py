"""Classify images with an exported ONNX file and onnxruntime, preprocessed as its sidecar JSON says.

    pip install 'simclrv2[export]'
    simclrv2 export --checkpoint runs/pipeline/labels_0.1/distill/best --format onnx --out model.onnx
    python examples/onnx_predict.py model.onnx photo.jpg more/photos/ --top 3

``model.onnx.json`` (written by ``export``) names the input and output and describes the preprocessing:
RGB with the EXIF orientation applied, values in [0, 1], the official evaluation crop resized to
``image_size`` (TensorFlow's bicubic, clipped), no mean/std normalisation, NCHW float32. The crop and
resize here are the package's own (``simclrv2.inference.predict.eval_views``, what ``simclrv2 predict``
feeds the network), so
the probabilities printed are ``predict``'s. A deployment without torch reimplements the steps the
sidecar describes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def preprocess(files: list[Path], sidecar: dict) -> tuple[np.ndarray, list[str | None]]:
    """float32 ``[N, 3, S, S]`` of the readable files, as ``sidecar["preprocessing"]`` describes; and, per
    file, None or why it could not be read."""
    from simclrv2.data.gpu_augment import to_float
    from simclrv2.inference.predict import eval_views

    prep = sidecar["preprocessing"]
    size = int(prep["image_size"])
    crop = prep.get("kept", "full")  # runs trained with data.crop=square: cut from their kept square
    images, errors = eval_views(files, size, crop, workers=1)
    x = (images if images.is_floating_point() else to_float(images, size)).numpy()
    normalization = prep.get("normalization")
    if normalization:  # none today; honoured should an export ever record one
        mean = np.asarray(normalization["mean"], np.float32)[:, None, None]
        std = np.asarray(normalization["std"], np.float32)[:, None, None]
        x = (x - mean) / std
    return x, errors


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict(model: Path, files: list[Path], top: int = 5) -> list[tuple[str, list[tuple[str, float]]]]:
    """``(file, [(class, probability), ...])`` of each readable file, best first."""
    import onnxruntime as ort

    sidecar = json.loads(Path(f"{model}.json").read_text())
    x, errors = preprocess(files, sidecar)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run([sidecar["output"]["name"]], {sidecar["input"]["name"]: x})[0]
    probs = softmax(logits)
    readable = [f for f, e in zip(files, errors) if e is None]
    for error in filter(None, errors):
        print(f"skipped: {error}", file=sys.stderr)
    out = []
    for f, p in zip(readable, probs):
        best = np.argsort(-p)[:top]
        out.append((str(f), [(sidecar["classes"][i], float(p[i])) for i in best]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="exported .onnx file (its sidecar MODEL.json beside it)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top", type=int, default=5)
    args = p.parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnx_predict: error: needs onnxruntime: pip install 'simclrv2[export]'", file=sys.stderr)
        return 2
    if not Path(f"{args.model}.json").is_file():
        print(f"onnx_predict: error: {args.model}.json not found: export writes it beside the model", file=sys.stderr)
        return 2
    from simclrv2.data.errors import DataError
    from simclrv2.inference.predict import collect_images

    try:
        files = collect_images(args.images)
    except DataError as e:
        print(f"onnx_predict: error: {e}", file=sys.stderr)
        return 2
    for path, classes in predict(args.model, files, args.top):
        print(path + "\t" + ", ".join(f"{name} {prob:.4f}" for name, prob in classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
