"""The thread policy: threads=N, else OMP_NUM_THREADS, else the physical cores the process may use."""

from __future__ import annotations

import pytest
import torch

from simclrv2.cli import main
from simclrv2.core import runtime


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cores,quota,local,expected", [
    (4, None, 1, 4), (4, 2, 1, 2), (8, None, 2, 4), (1, None, 4, 1), (16, 3, 1, 3)])
def test_default_threads(cores, quota, local, expected):
    assert runtime.default_threads(cores, quota, local) == expected


def test_physical_cores_counts_hyperthreads_once(tmp_path):
    for cpu, core in ((0, 0), (1, 0), (2, 1), (3, 1)):  # two cores with two hyperthreads each
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "core_id").write_text(f"{core}\n")
        (topology / "physical_package_id").write_text("0\n")
    assert runtime.physical_cores({0, 1, 2, 3}, tmp_path) == 2
    assert runtime.physical_cores({0, 2}, tmp_path) == 2 and runtime.physical_cores({0, 1}, tmp_path) == 1
    assert runtime.physical_cores({7}, tmp_path) == 1  # no topology: counted as a core


def test_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtime.cgroup_cpu_limit(tmp_path / "cpu.max") == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime.cgroup_cpu_limit(tmp_path / "cpu.max") is None
    assert runtime.cgroup_cpu_limit(tmp_path / "absent") is None


def test_omp_num_threads_is_respected(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert runtime.configure_threads(0) == 1 and torch.get_num_threads() == 1
    assert runtime.configure_threads(2) == 2 and torch.get_num_threads() == 2  # threads=N wins


def test_threads_key_sets_torch_threads_in_a_run(capsys, tmp_path):
    torch.set_num_threads(1)
    argv = ["pretrain", "--out", str(tmp_path / "p"), "image_size=8", "width=0.125", "head_layers=2", "knn_every=0",
            "device=cpu", "epochs=0", "threads=2"]
    assert main(argv) == 0
    assert torch.get_num_threads() == 2
    assert "threads     2 per process" in capsys.readouterr().out
    # the thread count decides nothing about the result: the same directory resumes with another count
    assert main(argv[:-1] + ["threads=1"]) == 0 and torch.get_num_threads() == 1
