"""How many CPU threads torch uses in a run: ``threads=N``, else ``OMP_NUM_THREADS``, else the physical
cores this process may run on.

Why not torch's own default: it counts the machine's cores, not the ones a container quota or CPU
affinity leaves to the process, and it counts hyperthreads, which mostly spin-wait against each other
in the small convolutions of these models. Under ``torchrun`` the cores are shared by the local
processes. On a machine busy with other work even this is too many; ``threads=1`` is then often the
fastest choice for small models (see the README).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch


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
