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


# -- bf16 autocast: where the hardware has it -------------------------------------------------------

@pytest.mark.parametrize("amx", [False, True])
def test_bf16_autocast_on_a_cpu_only_with_amx(monkeypatch, amx):
    monkeypatch.setattr(runtime, "cpu_has_amx_bf16", lambda: amx)
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with runtime.autocast(cpu, True):
        assert (a @ b).dtype == (torch.bfloat16 if amx else torch.float32)
    with runtime.autocast(cpu, False):  # amp=false: float32 everywhere
        assert (a @ b).dtype == torch.float32
    assert runtime.uses_bf16(cpu, True) is amx and runtime.channels_last(cpu, True) is amx
    assert not runtime.uses_bf16(cpu, False) and not runtime.channels_last(cpu, False)
    conv = runtime.prepare_model(torch.nn.Conv2d(3, 4, 3), cpu, amp=True)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is amx


def test_amx_check_never_raises():
    assert isinstance(runtime.cpu_has_amx_bf16(), bool)


def test_a_bf16_step_follows_the_float32_step():
    """A pretraining step in CPU bf16 autocast (channels_last) against the same step in float32: the
    same loss to 1e-3 relative, and gradients far closer to float32's than another batch's float32
    gradients are (bf16's error is small next to the sampling noise SGD lives with). Measured: loss
    1e-4 relative; cosine to float32 0.97 over all parameters, 0.87 at worst per tensor; another
    batch 0.02."""
    from simclrv2.config import ModelConfig
    from simclrv2.losses import nt_xent
    from simclrv2.models.networks import build_pretrain_model

    torch.manual_seed(0)
    net = build_pretrain_model(ModelConfig(model="resnet18", width=0.25, cifar_stem=False, head_layers=2))
    batch, other = torch.rand(32, 3, 32, 32), torch.rand(32, 3, 32, 32)

    def step(x: torch.Tensor, bf16: bool):
        model = net.to(memory_format=torch.channels_last if bf16 else torch.contiguous_format)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z = model(x)
        loss = nt_xent(z[:16], z[16:], 0.2)
        loss.backward()
        return loss.item(), {n: p.grad.flatten().float().clone() for n, p in model.named_parameters()
                             if p.grad is not None and p.grad.norm() > 0}  # zero-gamma branches: none

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return torch.nn.functional.cosine_similarity(a, b, dim=0).item()

    loss32, grads32 = step(batch, False)
    loss16, grads16 = step(batch, True)
    _, grads_other = step(other, False)
    assert abs(loss16 - loss32) < 1e-3 * abs(loss32)
    assert grads16.keys() == grads32.keys() and len(grads32) > 30
    assert cosine(torch.cat(list(grads16.values())), torch.cat(list(grads32.values()))) > 0.95
    assert cosine(torch.cat(list(grads_other.values())), torch.cat(list(grads32.values()))) < 0.5
    for name, g in grads32.items():
        assert cosine(grads16[name], g) > 0.8, name
