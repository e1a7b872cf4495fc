"""Kill a small run (SIGKILL) at every moment a checkpoint is being written, and at random moments;
every resume must end with the weights of an uninterrupted run, bit for bit. Two runs on one --out:
the second is refused at once. Ctrl-C during start-up: one line, exit code 130."""

import json
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
from simclrv2.cli import main
from simclrv2.train import rundir

EPOCHS = 4
ARGS = ["supervised", "--preset", "digits", "image_size=8", "width=0.125", "head_layers=2", f"epochs={EPOCHS}",
        "batch_size=32", "device=cpu", "seed=3"]
# every point of a save (checkpoint.save calls checkpoint.kill_point): "best" has no training state
POINTS = [f"best:{p}" for p in ("begin", "weights", "meta", "publish", "published", "done")] + \
         [f"last:{p}" for p in ("begin", "state", "weights", "meta", "publish", "published", "done")]


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "simclrv2", *ARGS, *extra, "--out", str(out)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SIMCLRV2_KILL_AT"}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _final(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: checkpoint.load(out / name)[0] for name in ("last", "best")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(_cmd(out), check=True, env=_env(), capture_output=True, timeout=300)
    return _final(out)


def test_sigkill_at_every_checkpoint_writing_moment_then_resume_exactly(tmp_path, uninterrupted):
    """One run directory goes through a chain of attempts: each is SIGKILLed at the first time it passes
    the next kill point (then two at random moments), the next attempt resumes; the last one finishes."""
    out = tmp_path / "run"
    rng = random.Random(0)
    killed = []
    for point in POINTS + ["random", "random"]:
        if point == "random":
            proc = subprocess.Popen(_cmd(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(1.0, 4.0))
            proc.send_signal(signal.SIGKILL)
        else:
            proc = subprocess.Popen(_cmd(out), env=_env(SIMCLRV2_KILL_AT=f"{point}:1"), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (-signal.SIGKILL, 0), err.decode()
        if proc.returncode == -signal.SIGKILL:
            killed.append(point)
        for name in ("last", "best"):  # after every kill, what a checkpoint name points to is complete
            if os.path.lexists(out / name):
                checkpoint.load(out / name)
    assert set(POINTS) <= set(killed), f"kill points not reached: {set(POINTS) - set(killed)}"
    done = subprocess.run(_cmd(out), env=_env(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    final = _final(out)
    for name in ("last", "best"):
        for k, v in uninterrupted[name].items():
            assert torch.equal(final[name][k], v), f"{name}: {k} differs from the uninterrupted run"
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))  # epochs redone after a kill are logged once
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert sorted(leftovers) == sorted(os.readlink(out / n) for n in ("last", "best"))
    print(f"kill points covered: {len(killed)} ({len(POINTS)} named + {len(killed) - len(POINTS)} random)")


def test_a_second_run_on_the_same_out_is_refused_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(_cmd(out, "epochs=200"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / ".lock").is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode()
        code = main([*ARGS, "epochs=200", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"is being written by another run (pid {first.pid} on " in err, err
        assert len(err.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    rundir.lock(out)  # the dead process does not keep the lock
    rundir.release(out)


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path / "run"), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.time() + 60
    while proc.poll() is None and time.time() < deadline and "libtorch" not in maps.read_text():
        time.sleep(0.01)  # wait until torch is being imported: the command's own handler is in place
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert len(err.decode().strip().splitlines()) == 1 and "interrupted" in err.decode()
    assert not (tmp_path / "run").exists()
