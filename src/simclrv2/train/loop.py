"""The epoch loop every stage runs: batches, optimizer steps, evaluation, logging, checkpoints, resume.

A stage supplies ``loss_of(batch_indices) -> loss`` and, optionally, ``evaluate(epoch) -> metrics``; the
loop owns everything else. Checkpoints (``last`` every epoch and on SIGTERM/SIGINT, ``best`` by
validation top-1) carry the optimizer, the random generators and the position in the epoch, so a
resumed run continues exactly where the interrupted one stopped. A run resumed with more epochs than it
was started with continues on the schedule of the new length; one already complete trains nothing.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclrv2 import checkpoint
from simclrv2.errors import NonFiniteError
from simclrv2.train.runlog import RunLog, progress
from simclrv2.train.stepper import Stepper
from simclrv2.train.batching import epoch_batches, steps_per_epoch


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint was written and the run can be resumed."""


@dataclass
class Stage:
    """What the loop needs to know about the stage it runs."""

    name: str
    out: Path
    net: nn.Module  # the network that is saved (unwrapped)
    stepper: Stepper
    meta: dict[str, Any]  # saved in every checkpoint
    num_items: int  # images per epoch (global)
    batch_size: int  # per optimizer step (this process)
    epochs: int
    drop_last: bool
    order: torch.Generator  # shuffles the epochs
    generators: dict[str, torch.Generator] = field(default_factory=dict)  # e.g. augmentation
    stateful: dict[str, Any] = field(default_factory=dict)  # extra objects with state_dict (memory buffer)
    is_main: bool = True  # rank 0 writes checkpoints, logs and progress
    shard: Callable[[Tensor], Tensor] | None = None  # this rank's part of a global batch
    feeds: list[Any] = field(default_factory=list)  # BatchFeeds told each epoch's batches ahead of use

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_items, self.batch_size, self.drop_last)


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked between steps (restored on exit, when the epoch's
    progress bar, whose heartbeat thread would outlive an error, is closed too)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self.bar: Any = None

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _train_state(stage: Stage, epoch: int, batch_in_epoch: int, epoch_order_state: Tensor,
                 history: list[dict[str, Any]], best: float, seconds: float, loss_sum: float = 0.0
                 ) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "loss_sum": loss_sum,  # over the batches of this epoch already run

        "stepper": stage.stepper.state_dict(),
        "epoch": epoch, "batch_in_epoch": batch_in_epoch,
        "order_state": epoch_order_state,
        "generators": {k: g.get_state() for k, g in stage.generators.items()},
        "stateful": {k: v.state_dict() for k, v in stage.stateful.items()},
        "torch_rng": torch.get_rng_state(),
        "history": history, "best": best,
    }


def resume_from(stage: Stage) -> dict[str, Any] | None:
    """Load ``out/last`` into the stage if it exists; return its training state (None: fresh start).

    A checkpoint without its training state is an error, never a silent restart (except one of an
    ``epochs=0`` run, which has trained nothing)."""
    stem = stage.out / "last"
    if not checkpoint.exists(stem):
        return None
    tensors, meta = checkpoint.load(stem)
    state = checkpoint.load_train_state(stem)
    if state is None:
        if meta.get("epoch", 0) == 0:
            return None
        raise checkpoint.CheckpointError(f"{stem} has no training state; the run cannot be resumed: pass "
                                         f"--overwrite to train again from the start")
    checkpoint.load_weights(stage.net, tensors, source=f"checkpoint {stem}")
    try:
        stage.stepper.load_state_dict(state["stepper"])
        for k, g in stage.generators.items():
            g.set_state(state["generators"][k])
        for k, v in stage.stateful.items():
            v.load_state_dict(state["stateful"][k])
        torch.set_rng_state(state["torch_rng"])
        stage.order.set_state(state["order_state"])
        # what fit() reads next, checked here, before the run directory is committed
        int(state["epoch"]), int(state["batch_in_epoch"]), float(state["best"])
        float(state.get("loss_sum", 0.0)), float(state.get("seconds", 0.0))
        if not isinstance(state["history"], list) or not all(isinstance(h, dict) for h in state["history"]):
            raise TypeError("its history is not a list of records")
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as e:
        raise checkpoint.CheckpointError(f"the training state of {stem} does not fit this run ({type(e).__name__}: "
                                         f"{e}); pass --overwrite to train again from the start") from None
    return state


def _trim_metrics(path: Path, epochs: int) -> None:
    """Keep the metrics of the first ``epochs`` epochs (what the resumed checkpoint has seen): lines of
    an epoch that is redone after a crash, and a line cut by one, go."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            if int(record.get("epoch", 0)) <= epochs:
                kept.append(line + "\n")
        except (ValueError, TypeError, AttributeError):
            continue
    checkpoint.atomic_write(path, lambda p: p.write_text("".join(kept)))


def _check_finite(stage: Stage, epoch: int) -> None:
    bad = checkpoint.non_finite(stage.net.state_dict())
    if bad:
        raise NonFiniteError(f"{len(bad)} weight/statistic tensor(s) hold NaN or inf after epoch {epoch} "
                             f"({', '.join(bad[:3])}): training diverged (lower the learning rate?); "
                             f"the last good checkpoint is kept")


def fit(stage: Stage, loss_of: Callable[[Tensor], Tensor], evaluate: Callable[[int], dict[str, float]] | None = None,
        resume: bool = False, show_progress: bool = True, after_step: Callable[[], None] | None = None,
        commit: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Train ``stage`` for its epochs; return history, best and final metrics, seconds. ``commit``
    (the run directory's) is called once the checkpoint to resume has been loaded and checked whole,
    so that a refused one leaves the directory as it was."""
    state = resume_from(stage) if resume else None
    if commit is not None:
        commit()
    log = RunLog(stage.out, stage.name, enabled=stage.is_main)
    history: list[dict[str, Any]] = []
    best, start_epoch, start_batch, carried_loss = float("-inf"), 0, 0, 0.0
    if state is not None:
        history, best = list(state["history"]), float(state["best"])
        start_epoch, start_batch = int(state["epoch"]), int(state["batch_in_epoch"])
        carried_loss = float(state.get("loss_sum", 0.0))
        stage.order.set_state(state["order_state"])
        if start_epoch > stage.epochs or (start_epoch == stage.epochs and start_batch > 0):
            raise checkpoint.CheckpointError(
                f"{stage.out} has already trained {start_epoch} epoch(s), more than epochs={stage.epochs}: "
                f"choose epochs >= {start_epoch}, or --overwrite to train again")
        if stage.is_main:
            _trim_metrics(log.path, start_epoch)
        if stage.is_main and show_progress and start_epoch == stage.epochs:
            print(f"{stage.name}: {stage.out} is already complete ({stage.epochs} epochs); nothing to train",
                  flush=True)
        elif stage.is_main and show_progress:
            print(f"{stage.name}: resumed from {stage.out / 'last'} at epoch {start_epoch + 1}, "
                  f"batch {start_batch}", flush=True)
    start, before = time.time(), float(state.get("seconds", 0.0)) if state else 0.0

    def elapsed() -> float:  # training time over all attempts of this run
        return before + time.time() - start

    spe = stage.steps_per_epoch
    seconds: float | None = None  # training time at the end of this attempt's last epoch
    with _StopFlag() as stop:
        for epoch in range(start_epoch, stage.epochs):
            order_state = stage.order.get_state()
            batches = epoch_batches(stage.num_items, stage.batch_size, stage.order, stage.drop_last)
            for feed in stage.feeds:
                feed.plan([b if stage.shard is None else stage.shard(b) for b in batches[start_batch:]])
            bar = stop.bar = progress(spe, f"{stage.name} {epoch + 1}/{stage.epochs}",
                                      show_progress and stage.is_main)
            bar.update(start_batch)
            t0, loss_sum, seen = time.time(), carried_loss, 0
            lr = stage.stepper.lr
            for i in range(start_batch, len(batches)):
                idx = batches[i] if stage.shard is None else stage.shard(batches[i])
                lr = stage.stepper.lr
                loss_sum += stage.stepper.step(loss_of(idx))
                if after_step is not None:
                    after_step()
                seen += len(batches[i])
                bar.step(len(batches[i]), loss=f"{loss_sum / (i + 1):.3f}", lr=f"{lr:.3g}")
                if stop.signal is not None:
                    bar.close()
                    for feed in stage.feeds:  # undo a batch made ahead (its random draws) before saving
                        getattr(feed, "rewind", lambda: None)()
                    if stage.is_main:
                        checkpoint.save(stage.out / "last", stage.net,
                                        {**stage.meta, "epoch": epoch, "interrupted": True},
                                        _train_state(stage, epoch, i + 1, order_state, history, best,
                                                     elapsed(), loss_sum))
                    raise Interrupted(f"{stage.name} stopped by signal {stop.signal} at epoch {epoch + 1}, "
                                      f"batch {i + 1}; resume with --resume")
            bar.close()
            _check_finite(stage, epoch + 1)
            start_batch, carried_loss = 0, 0.0
            record: dict[str, Any] = {"epoch": epoch + 1, "step": stage.stepper.step_count,
                                      "loss": loss_sum / max(len(batches), 1), "lr": lr,
                                      "images_per_s": seen / max(time.time() - t0, 1e-9)}
            if evaluate is not None:
                record.update(evaluate(epoch + 1))
            history.append(record)
            log.write(**record)
            if stage.is_main and show_progress:
                print(f"{stage.name} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in record.items()), flush=True)
            score = record.get("val_top1", float("-inf"))
            # a classifier without a validation split (a few images per class): its latest is its best
            improved = score > best or (stage.meta.get("kind") == "classifier" and "val_top1" not in record)
            best = max(best, score)
            seconds = elapsed()  # saved with the epoch, so that a resumed run reports the same time
            if stage.is_main:
                meta = {**stage.meta, "epoch": epoch + 1, "metrics": record}
                if improved:
                    checkpoint.save(stage.out / "best", stage.net, meta)
                checkpoint.save(stage.out / "last", stage.net, meta,
                                _train_state(stage, epoch + 1, 0, stage.order.get_state(), history, best,
                                             seconds))
    if stage.epochs == 0 and stage.is_main and state is None:
        checkpoint.save(stage.out / "last", stage.net, {**stage.meta, "epoch": 0, "metrics": {}})
    best_record = max(history, key=lambda r: r.get("val_top1", float("-inf"))) if history else {}
    return {"history": history, "best": best_record, "final": history[-1] if history else {},
            "seconds": seconds if seconds is not None else elapsed()}
