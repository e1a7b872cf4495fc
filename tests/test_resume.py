"""Kill a running pretrain (SIGKILL at random moments, SIGTERM), resume, and end with the weights of
an uninterrupted run; no checkpoint is ever unreadable, no file is lost."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from simclrv2 import checkpoint

EPOCHS = 16
ARGS = ["pretrain", "--preset", "digits", "image_size=8", "width=0.125", "head_layers=2", f"epochs={EPOCHS}",
        "batch_size=128", "knn_every=0", "device=cpu", "seed=3"]


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "simclrv2", *ARGS, "--out", str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(out / "last")[0]


def _epoch(out: Path) -> int:
    try:
        return checkpoint.load(out / "last")[1]["epoch"]
    except checkpoint.CheckpointError:
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    subprocess.run(_cmd(out), check=True, env=_env(), capture_output=True, timeout=300)
    return _weights(out)


def test_sigkill_at_random_moments_then_resume(tmp_path, uninterrupted):
    """Each attempt is killed at a random moment after it has finished at least one more epoch
    (so some kills land while a checkpoint is being written); the next attempt resumes."""
    rng = random.Random(0)
    out = tmp_path / "run"
    kills = 0
    for attempt in range(EPOCHS + 2):
        before = _epoch(out)
        proc = subprocess.Popen(_cmd(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while proc.poll() is None and _epoch(out) <= before and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None and attempt < 4:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            after = _epoch(out)  # the checkpoint is readable after every kill
            assert after > before  # finished epochs are never lost: at most the current one is redone
        else:
            assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
            break
    assert kills == 4
    assert _epoch(out) == EPOCHS
    final = _weights(out)
    for k in uninterrupted:
        assert torch.equal(final[k], uninterrupted[k]), f"{k} differs from the uninterrupted run"
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_sigterm_saves_mid_epoch_and_resumes_exactly(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "last").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    assert proc.returncode == 2 and b"stopped by signal" in err, err.decode()
    _, meta = checkpoint.load(out / "last")
    assert meta.get("interrupted") is True
    subprocess.run(_cmd(out), check=True, env=_env(), capture_output=True, timeout=300)
    final = _weights(out)
    for k in uninterrupted:
        assert torch.equal(final[k], uninterrupted[k]), f"{k} differs from the uninterrupted run"


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    """A writer killed halfway leaves the old file intact (and only a temporary file beside it)."""
    target = tmp_path / "last.json"
    checkpoint.write_json(target, {"epoch": 1})
    code = ("import time, sys; from pathlib import Path; from simclrv2.checkpoint import atomic_write\n"
            "def slow(p):\n    f = open(p, 'w'); f.write('{\"epoch\": '); f.flush(); print('writing', flush=True)\n"
            "    time.sleep(60)\n"
            f"atomic_write(Path({str(target)!r}), slow)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=_env())
    assert proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_text().strip().startswith("{") and '"epoch": 1' in target.read_text()
