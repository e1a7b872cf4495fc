"""Where a stage runs: the process group, the device, the CPU threads, the seeds, autocast.

Threads: ``threads=N``, else ``OMP_NUM_THREADS``, else the physical cores this process may run on.

Why not torch's own default: it counts the machine's cores, not the ones a container quota or CPU
affinity leaves to the process, and it counts hyperthreads, which mostly spin-wait against each other
in the small convolutions of these models. Under ``torchrun`` the cores are shared by the local
processes. On a machine busy with other work even this is too many; ``threads=1`` is then often the
fastest choice for small models (see the README).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simclrv2 import distributed
from simclrv2.config import Config, ConfigError


def available_cpus() -> set[int]:
    """The logical CPUs this process may run on (its affinity mask)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def cgroup_cpu_limit(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """The CPU quota of a cgroup-v2 container, rounded up (``None``: no limit or unknown)."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def physical_cores(cpus: set[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """How many distinct physical cores the logical ``cpus`` belong to (hyperthreads counted once)."""
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add((topology / "physical_package_id").read_text().strip() + ":" +
                      (topology / "core_id").read_text().strip())
        except OSError:
            cores.add(f"cpu{cpu}")  # no topology information: count the logical CPU
    return max(1, len(cores))


def default_threads(cores: int, quota: int | None, local_processes: int) -> int:
    """Threads per process: the physical cores, capped by the container quota, shared by the local processes."""
    usable = min(cores, quota) if quota else cores
    return max(1, usable // max(1, local_processes))


def configure_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads by the policy above; return the number in use.

    ``threads > 0`` wins; with ``threads == 0`` a set ``OMP_NUM_THREADS`` is respected (torch read it at
    start-up) and nothing is changed.
    """
    if threads <= 0:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = default_threads(physical_cores(available_cpus()), cgroup_cpu_limit(), local)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


@dataclass
class Runtime:
    """Where a stage runs: this process's rank in the world, its device, and the epoch order."""

    world: distributed.World
    device: torch.device
    order: torch.Generator  # shuffles epochs; seeded alike on every rank
    seed: int

    def rank_seed(self, offset: int) -> int:
        """A seed of its own for each rank and purpose (augmentation differs across ranks)."""
        return self.seed + offset + 1000 * self.world.rank

    def wrap(self, net: nn.Module, compile: bool = False, amp: bool = True) -> nn.Module:
        """The network on this device, with global BatchNorm and DDP across ranks, optionally compiled."""
        return distributed.wrap(prepare_model(net, self.device, compile, amp), self.world, self.device)

    def global_batch(self, batch_size: int, n: int) -> int:
        """The configured (global) batch, capped at the data size and divisible by the world size (a
        configured batch that does not divide is refused, not silently reduced)."""
        if batch_size % self.world.size:
            raise ConfigError(f"batch_size={batch_size} is the global batch and must be divisible by the "
                              f"{self.world.size} processes of this torchrun; choose a multiple of {self.world.size}")
        batch = min(batch_size, n)
        batch -= batch % self.world.size
        if batch < self.world.size:
            raise ValueError(f"{n} images cannot be split over {self.world.size} processes")
        return batch


def start(cfg: Config) -> Runtime:
    """Join the torchrun process group if there is one, pick the device, seed everything."""
    configure_threads(cfg.threads)
    world = distributed.init(cfg.device)
    device = distributed.device_for(world, cfg.device) if world.distributed else resolve_device(cfg.device)
    setup_backend(device)
    return Runtime(world, device, seed_everything(cfg.seed), cfg.seed)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup_backend(device: torch.device) -> None:
    """Fast defaults on CUDA (cuDNN autotuning, TF32); nothing to do on CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@functools.cache  # asked at every autocast (each step); the CPU does not change
def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX, Sapphire Rapids and later).

    There bf16 autocast doubles a ResNet-18 step (benchmarks/README). CPUs without AMX keep float32: bf16
    runs there on narrower or emulated instructions, and its speed was not measured on one.
    """
    check = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)
    try:
        return bool(check and check() and torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_bf16(device: torch.device, amp: bool = True) -> bool:
    """Whether ``amp`` means bf16 autocast on ``device``: on CUDA, and on CPUs with AMX."""
    return amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_amx_bf16()))


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where :func:`uses_bf16` says so (CUDA, AMX CPUs); plain float32 elsewhere."""
    if uses_bf16(device, enabled):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(device: torch.device, amp: bool = True) -> bool:
    """Whether networks run channels_last: on CUDA, and under CPU bf16 (oneDNN's fast layout there)."""
    return device.type == "cuda" or uses_bf16(device, amp)


def prepare_model(model: nn.Module, device: torch.device, compile: bool = False, amp: bool = True) -> nn.Module:
    """Move to the device, channels_last where :func:`channels_last` says, and ``torch.compile`` when asked
    for on CUDA (on a CPU the compile time outweighs the gain for these short runs: ignored there)."""
    model = model.to(device)
    if channels_last(device, amp):
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda" and compile:
        model = torch.compile(model)
    return model
