"""How many threads torch computes with, and a warning when the host cannot give them: on a loaded
2-core machine torch's 2 threads ran 10-20x slower than 1 thread, because each step waits for its
slowest thread and a thread that shares a core with other work is slow."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """torch computes with `num_threads` inside the block (None: leave torch's choice), and with the
    number it had before afterwards (`xlm compare` trains several runs in one process)."""
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_quota(path: Path = CGROUP_CPU_MAX) -> float | None:
    """The cgroup (v2) CPU quota in cores ("200000 100000" is 2.0), or None when there is none."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


@dataclass(frozen=True)
class HostLoad:
    cores: int  # the cores this process may run on
    load1: float  # the 1-minute load average: the cores other work keeps busy, rounded
    quota: float | None  # cgroup CPU quota in cores

    @classmethod
    def here(cls) -> HostLoad:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cls(cores=cores, load1=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0, quota=cpu_quota())

    def free_cores(self) -> int:
        """Cores neither busy with other work nor above the quota; at least one."""
        free = self.cores - round(self.load1)
        if self.quota is not None:
            free = min(free, math.floor(self.quota))
        return max(1, free)


def oversubscription_warning(threads: int, host: HostLoad) -> str | None:
    """A one-line warning with the fix when `threads` exceed the cores the host has free: the rounded
    1-minute load average plus the threads above the cores, or the threads above a cgroup quota
    (nothing when even one thread would be too many: there is no better setting to suggest)."""
    fit = host.free_cores()
    if threads <= fit:
        return None
    reasons = []
    if round(host.load1) + threads > host.cores:
        reasons.append(f"the 1-minute load average is {host.load1:.2f} on {host.cores} cores")
    if host.quota is not None and threads > host.quota:
        reasons.append(f"the cgroup CPU quota is {host.quota:g} cores")
    return (f"warning: training with {threads} threads but {' and '.join(reasons)}; threads sharing cores can make "
            f"each step many times slower: set trainer.num_threads={fit} (or OMP_NUM_THREADS={fit})")
