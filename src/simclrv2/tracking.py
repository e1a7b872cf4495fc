"""Optional TensorBoard logging of the per-epoch metrics every stage already writes to ``metrics.jsonl``.

TensorBoard is an optional dependency (``pip install simclrv2[tensorboard]``): without it, or with
``SIMCLRV2_TENSORBOARD=0`` in the environment, :class:`TensorBoardLog` silently does nothing.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["TensorBoardLog", "tensorboard_enabled"]

# Keys of a metrics record that are not metrics: the step itself and bookkeeping.
NOT_SCALARS = frozenset({"epoch", "step", "stage", "time"})


def tensorboard_enabled() -> bool:
    """False when the environment opts out with ``SIMCLRV2_TENSORBOARD=0`` (or ``false``/``off``)."""
    return os.environ.get("SIMCLRV2_TENSORBOARD", "1").strip().lower() not in ("0", "false", "no", "off")


class TensorBoardLog:
    """Scalars of one stage under ``namespace/`` (``pretrain/loss``, ``finetune/val_top1``, ...).

    The event file is created lazily on the first write and flushed after every write, so the
    dashboard is current and nothing is lost if the process is killed between epochs.
    """

    def __init__(self, log_dir: str | Path, namespace: str) -> None:
        self.log_dir = Path(log_dir)
        self.namespace = namespace.strip("/")
        self._writer: Any = None
        self._available = tensorboard_enabled()

    @property
    def active(self) -> bool:
        """Whether scalars are being written (TensorBoard importable and not switched off)."""
        return self._available

    def _get_writer(self) -> Any:
        if self._writer is None and self._available:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: logging to metrics.jsonl only
                self._available = False
                return None
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def write(self, values: Mapping[str, Any], step: int) -> None:
        """Log the finite numeric entries of ``values`` (booleans and strings are skipped) at ``step``."""
        scalars = {k: float(v) for k, v in values.items()
                   if k not in NOT_SCALARS and isinstance(v, numbers.Real) and not isinstance(v, bool)
                   and math.isfinite(v)}
        if not scalars:
            return
        writer = self._get_writer()
        if writer is None:
            return
        for key, value in scalars.items():
            writer.add_scalar(f"{self.namespace}/{key}", value, global_step=step)
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
