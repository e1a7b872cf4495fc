"""Running a network over a whole image set in batches, without gradients."""

from __future__ import annotations

import torch
from torch import Tensor

from simclrv2.data.feed import chunks
from simclrv2.data.files import FileImages
from simclrv2.core.runtime import autocast, channels_last


@torch.no_grad()
def infer(fn, images: Tensor | FileImages, device: torch.device, batch_size: int = 512, amp: bool = True) -> Tensor:
    """Apply ``fn`` to the evaluation views of ``images`` (:func:`simclrv2.data.feed.chunks`: the
    official ``preprocess_for_eval``, float [0, 1]) in batches on ``device``; float32 out on CPU."""
    outputs = []
    for chunk in chunks(images, batch_size, device=device):
        x = chunk.to(device, non_blocking=True)
        if channels_last(device, amp):
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            outputs.append(fn(x).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)
