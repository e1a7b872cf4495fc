"""Learning-rate scaling with batch size, and linear warmup followed by cosine decay."""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, batch_size: int, scaling: str = "sqrt") -> float:
    """SimCLRv2's ``base x sqrt(batch)`` (``sqrt``), SimCLR's ``base x batch/256`` (``linear``)."""
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if scaling == "linear":
        return base_lr * batch_size / 256
    if scaling == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling {scaling!r}: use sqrt, linear or none")


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup to ``peak_lr`` over
    ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
