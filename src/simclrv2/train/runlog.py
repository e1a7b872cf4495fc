"""What a run records as it goes: ``metrics.jsonl`` (and TensorBoard when installed), and the progress bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class RunLog:
    """Metrics of a run: one JSON object per line in ``metrics.jsonl`` (written by rank 0 only)."""

    def __init__(self, out_dir: Path, stage: str, enabled: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.stage = stage
        self.enabled = enabled
        self.start = time.time()
        from simclrv2.tracking import TensorBoardLog  # optional: a no-op without tensorboard

        self.tensorboard = TensorBoardLog(Path(out_dir) / "tensorboard", stage) if enabled else None

    def write(self, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"stage": self.stage, "time": round(time.time() - self.start, 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(values, step=int(values.get("epoch", values.get("step", 0))))


def progress(total: int, desc: str, enabled: bool = True):
    """A tqdm bar (loss, lr, images/s in its postfix; ETA from tqdm) on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0)
