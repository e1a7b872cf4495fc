"""Run directories: what one holds, who may write it, and when it is resumed, extended or replaced.

A run directory records its stage and resolved config in ``run.json`` (and ``config.yaml`` for
people). One process writes it at a time: the writer holds an OS lock (``flock``) on the directory,
which the kernel drops when the process dies, and describes itself in ``.lock``. Opening is in two
steps so that nothing is written, created or deleted before a run is known to start:
:func:`open_run` checks the directory (another writer, another stage, another config) and decides
whether to resume; :meth:`RunDir.commit`, called once the stage has loaded its data and checkpoints,
replaces an old run (``--overwrite``), creates the directory and records the new config.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simclrv2 import checkpoint, distributed
from simclrv2.config import Config, save_yaml
from simclrv2.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

RUN_FILE, LOCK_FILE = "run.json", ".lock"
RUN_FILES = ("metrics.jsonl", "config.yaml", RUN_FILE, "labeled.txt")  # removed with the run by --overwrite
IGNORED_FOR_RESUME = ("device", "workers", "threads")
READING_KEYS = ("on_device", "stream", "memory_gb", "decode")  # where images are read from, not what is computed
STAGE_SECTIONS = ("pretrain", "finetune", "distill", "supervised", "eval")
LABEL_KEYS = ("labels", "labels_per_class", "labels_file", "label_fractions")


class RunDirError(UserError):
    """The output directory cannot take this run (another writer, stage or config; a file in the way)."""


_held: dict[str, int] = {}  # directory -> the descriptor holding its lock (kept until the process ends)


def _relevant(values: dict[str, Any], stage: str | None) -> dict[str, Any]:
    """The part of a config that decides what ``stage`` computes: a pretraining run does not depend
    on fine-tuning hyperparameters or label choices, and so on."""
    values = {k: v for k, v in values.items() if k not in IGNORED_FOR_RESUME}
    if isinstance(values.get("data"), dict):
        values["data"] = {k: v for k, v in values["data"].items() if k not in READING_KEYS}
    if stage in STAGE_SECTIONS:
        values = {k: v for k, v in values.items() if k not in STAGE_SECTIONS or k == stage}
        if stage == "pretrain":
            values = {k: v for k, v in values.items() if k not in LABEL_KEYS}
    return values


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _writer_of(out: Path) -> str:
    """Who holds the lock of ``out``, as far as its ``.lock`` record tells."""
    try:
        info = json.loads((out / LOCK_FILE).read_text())
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is still starting up"
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:  # its data-loading workers (forked, holding the lock) are still exiting
            return f"pid {pid}, which has ended, or a process still starting up; retry in a few seconds"
        except OSError:
            pass
    return f"pid {pid} on {host}, started {info['started']}: {info.get('command', '?')}"


def lock(out: Path) -> None:
    """Take the write lock of directory ``out`` for this process, or refuse naming its holder."""
    key = str(out.resolve())
    if fcntl is None or key in _held:
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(f"{out} is being written by another run ({_writer_of(out)}); wait for it to end "
                          f"or choose another --out") from None
    except OSError as e:  # a file system without locks (some network mounts)
        logging.getLogger(__name__).warning("cannot lock %s (%s): make sure only one run writes it", out, e.strerror)
    _held[key] = fd


def release(out: Path) -> None:
    """Give up the write lock of ``out`` (it is also dropped when the process ends)."""
    fd = _held.pop(str(Path(out).resolve()), None)
    if fd is not None:
        os.close(fd)


def _check_resumable(stem: Path, epochs: int) -> None:
    """The checkpoint to resume is complete (weights and training state of one save) and not further
    than ``epochs``: checked before anything is written."""
    _, meta = checkpoint.load(stem)
    state = checkpoint.load_train_state(stem)
    done = int(meta.get("epoch", 0))
    if state is None and done > 0:
        raise checkpoint.CheckpointError(f"{stem} has no training state; the run cannot be resumed: pass "
                                         f"--overwrite to train again from the start")
    if done > epochs or (done == epochs and meta.get("interrupted")):
        raise RunDirError(f"{stem.parent} has already trained {done}{'+' if meta.get('interrupted') else ''} "
                          f"epoch(s), more than epochs={epochs}: choose more epochs, or --overwrite to train again")


def _recorded(out: Path) -> tuple[str | None, dict[str, Any]] | None:
    """(stage, config) of the run in ``out``; None when ``out`` holds no run."""
    run_file, yaml_file = out / RUN_FILE, out / "config.yaml"
    if run_file.is_file():
        try:
            record = json.loads(run_file.read_text())
            return record["stage"], record["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunDirError(f"{run_file} is unreadable ({e}); move the directory away or pass --overwrite") from None
    if yaml_file.is_file():  # written by an earlier version: the stage is in the checkpoint
        import yaml

        try:
            config = yaml.safe_load(yaml_file.read_text()) or {}
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise RunDirError(f"{yaml_file} is unreadable ({e}); move the directory away or pass --overwrite") from None
        stage = None
        if checkpoint.exists(out / "last"):
            stage = checkpoint.load(out / "last")[1].get("stage")
        return stage, config
    return None


@dataclass
class RunDir:
    """A checked run directory; :meth:`commit` makes it this run's."""

    path: Path
    cfg: Config
    stage: str
    resume: bool  # it holds a checkpoint of this run, to be continued (or found complete)
    replace: bool  # an old run is removed at commit (--overwrite)
    is_main: bool = True

    def commit(self) -> Path:
        """Replace the old run if asked, create the directory, take its lock, record the config."""
        out = self.path
        if self.is_main:
            if self.replace:
                for name in ("last", "best"):
                    checkpoint.remove(out / name)
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
                if (out / "tensorboard").is_dir():
                    shutil.rmtree(out / "tensorboard")
            out.mkdir(parents=True, exist_ok=True)
            lock(out)
            started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            checkpoint.write_json(out / LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                                                    "command": " ".join(["simclrv2", *sys.argv[1:]])[:300]})
            for stale in out.glob(".*.tmp"):  # left by a writer that was killed; what they replace is intact
                stale.unlink()
            for name in ("last", "best"):
                if checkpoint.exists(out / name) or list(out.glob(f".{name}.*")):
                    checkpoint.clean(out / name)
            checkpoint.write_json(out / RUN_FILE, {"format": "simclrv2-run/1", "stage": self.stage,
                                                   "config": self.cfg.to_dict()})
            checkpoint.atomic_write(out / "config.yaml", lambda p: save_yaml(self.cfg, p))
        distributed.barrier()
        return out


def open_run(out_dir: str | Path, cfg: Config, stage: str, overwrite: bool = False, resume: bool = False,
             is_main: bool = True) -> RunDir:
    """Check ``out_dir`` for a ``stage`` run of ``cfg`` without changing anything in it.

    A directory holding a checkpoint of the same config (as far as ``stage`` depends on it, and apart
    from the number of epochs, which extends or completes the run) is resumed; one of another stage
    or config is refused unless ``overwrite``; one that is being written by another process is refused.
    """
    out = Path(out_dir)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise RunDirError(f"--out {out}: {p} is a file, not a directory; choose another --out")
    if out.is_dir() and is_main:
        lock(out)
    recorded = _recorded(out) if out.is_dir() else None
    has_checkpoint = checkpoint.exists(out / "last")
    found, replace = False, False
    if recorded is None:
        if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
            raise RunDirError(f"--out {out} is a directory that holds no simclrv2 run; choose a new or empty one")
    else:
        old_stage, old_config = recorded
        if old_stage not in (None, stage):
            if not overwrite:
                raise RunDirError(f"{out} holds a {old_stage} run, not a {stage} run; choose another --out "
                                  f"(or pass --overwrite to replace it)")
            replace = True
        elif has_checkpoint:
            flat_old, flat_new = _flatten(_relevant(old_config, stage)), _flatten(_relevant(cfg.to_dict(), stage))
            diff = [k for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k)]
            if not diff or diff == [f"{stage}.epochs"]:
                found = True
                _check_resumable(out / "last", getattr(cfg, stage).epochs)
            elif overwrite:
                replace = True
            else:
                raise RunDirError(f"{out} holds a run with a different config (differs in: {', '.join(diff)}); "
                                  f"choose another --out or pass --overwrite")
        else:
            replace = True  # it died before its first checkpoint: nothing to keep
    if resume and not found:
        raise RunDirError(f"--resume: {out} holds no checkpoint of this run to resume")
    return RunDir(out, cfg, stage, found, replace, is_main)
