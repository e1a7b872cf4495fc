"""Learning-rate scaling with batch size, and linear warmup followed by cosine decay.

As the official ``tf2/model.py`` ``WarmUpAndCosineDecay`` and ``get_train_steps``: the schedule's
length and warmup are counted in examples (``N x epochs // B``), and step ``s`` (0-based, the
optimizer's ``iterations`` before the update) gets ``peak x s / warmup`` during warmup, so the first
step has learning rate 0 and the peak is reached at step ``warmup``.
"""

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


def schedule_steps(num_items: int, batch_size: int, epochs: float, warmup_epochs: float) -> tuple[int, int]:
    """``(warmup_steps, total_steps)`` of the official schedule: ``int(round(warmup_epochs x N // B))`` and
    ``N x epochs // B + 1`` (``get_train_steps``; the +1 is the official count, so the last step's rate is
    just above 0)."""
    warmup = int(round(warmup_epochs * num_items // batch_size))
    total = int(num_items * epochs // batch_size) + 1
    return warmup, total


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based): ``peak x step / warmup`` for ``step < warmup``,
    then cosine decay from ``peak`` at ``warmup`` to 0 at ``total_steps`` (and 0 after)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0), decay_steps) / decay_steps
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
