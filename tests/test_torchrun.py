"""Every stage runs unchanged under torchrun (two CPU processes, gloo)."""

import json
import os
import socket
import subprocess
import sys

from conftest import write_image_folder
from test_pipeline import TINY


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pipeline_under_torchrun_with_two_processes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()),
           "-m", "simclrv2", "pipeline", "--out", str(out), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIMCLRV2_TENSORBOARD": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 10 and all(0 <= r["top1"] <= 100 for r in results["rows"])
    assert proc.stdout.count("| labels | labeled images | stage |") == 1  # rank 0 alone prints
    assert proc.stdout.count("== simclrv2 pipeline") == 1 and proc.stdout.count("[9/9] 20% labels: distill (") == 1
    lines = (out / "pretrain" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # rank 0 alone logs


def test_only_rank_0_prints_results_and_info(tmp_path):
    """A stage's summary, ``final:``, ``checkpoint:`` and INFO lines appear once, not once per process."""
    data = write_image_folder(tmp_path / "images")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()),
           "-m", "simclrv2", "supervised", "--data", str(data), "--labels", "1.0", "--out", str(tmp_path / "sup"),
           "image_size=8", "width=0.125", "head_layers=2", "device=cpu", "epochs=1", "batch_size=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIMCLRV2_TENSORBOARD": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("== simclrv2 supervised") == 1
    assert proc.stdout.count("final: ") == 1 and proc.stdout.count("checkpoint: ") == 1
    assert proc.stderr.count("INFO: --data without --preset: ") == 1
