"""What a run records as it goes: ``metrics.jsonl`` (and TensorBoard when installed), and the progress bar."""

from __future__ import annotations

import json
import sys
import threading
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


# A step slower than this gets a line of its own, and one still running is reported every this many
# seconds: a run whose steps take minutes (a large network on a CPU) never looks hung.
SLOW_STEP_S = 5.0


class Progress:
    """Progress of one epoch by optimizer step: a tqdm bar on stderr (loss, lr and images/s in its
    postfix, ETA from tqdm) and, for slow steps, a plain line per step plus a heartbeat while one runs."""

    def __init__(self, total: int, desc: str, enabled: bool = True, slow_s: float | None = None) -> None:
        from tqdm import tqdm

        self.desc, self.total, self.enabled = desc, total, enabled
        self.slow_s = SLOW_STEP_S if slow_s is None else slow_s
        self.bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr,
                        dynamic_ncols=True, mininterval=1.0)
        self.write = tqdm.write
        self.start = self.last = time.time()
        self.done, self.images, self.stepped = 0, 0, 0  # steps done (resumed ones too), images and steps here
        self._closed = threading.Event()
        self._heartbeat = None
        if enabled and total > 0:
            self._heartbeat = threading.Thread(target=self._beat, name="simclrv2-progress", daemon=True)
            self._heartbeat.start()

    def update(self, n: int) -> None:
        """Count ``n`` steps done before this bar started (a resumed epoch)."""
        self.done += n
        self.bar.update(n)

    def step(self, images: int, **postfix: Any) -> None:
        """One optimizer step over ``images`` images finished."""
        now = time.time()
        took, self.last = now - self.last, now
        self.done += 1
        self.stepped += 1
        self.images += images
        rate = self.images / max(now - self.start, 1e-9)
        self.bar.update(1)
        self.bar.set_postfix(**postfix, img_s=f"{rate:.1f}" if rate < 10 else f"{rate:.0f}")
        if self.enabled and took > self.slow_s:
            extra = "".join(f", {k} {v}" for k, v in postfix.items())
            self.write(f"{self.desc}: step {self.done}/{self.total} took {took:.1f} s "
                       f"({images / took:.3g} images/s){extra}", file=sys.stderr)

    def _beat(self) -> None:
        """While a step runs longer than ``slow_s`` and twice the steps before it took on average, say so;
        then again at twice as long each time (every minute at most). A run whose steps all take 20 s
        gets one line per step (``step``), a first step of minutes a line now and then while it runs."""
        tick = min(max(self.slow_s, 0.01), 60.0) / 4
        step, due = -1, self.slow_s
        while not self._closed.wait(tick):
            if self.done != step:  # a new step began
                typical = (self.last - self.start) / self.stepped if self.stepped else 0.0
                step, due = self.done, max(self.slow_s, 2 * typical)
            running = time.time() - self.last
            if running > due and self.done < self.total:
                due = min(2 * running, running + 60.0)
                self.write(f"{self.desc}: step {self.done + 1}/{self.total} running for {running:.0f} s",
                           file=sys.stderr)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        self.bar.close()


def progress(total: int, desc: str, enabled: bool = True) -> Progress:
    """The progress of an epoch of ``total`` steps (see ``Progress``)."""
    return Progress(total, desc, enabled)
