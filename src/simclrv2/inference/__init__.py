"""Using trained checkpoints: feature extraction (:mod:`.embed`), prediction on image files
(:mod:`.predict`) and export to ONNX / TorchScript (:mod:`.export`); :mod:`.commands` wires them
into the ``simclrv2`` command line."""

from __future__ import annotations

__all__ = ["InferenceError"]


class InferenceError(ValueError):
    """An embed/predict/export request cannot be carried out; the message says why."""
