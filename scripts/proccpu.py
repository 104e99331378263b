"""CPU seconds of processes and their children, read from /proc while they run.

`rusage` only counts children once they are reaped, and a consumer's imaging workers are its
children, not ours; sampling /proc every few hundred milliseconds and keeping each process's last
value splits the CPU of a consumer into its event loop and its workers, even after they exit.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float | None:
    """User + system CPU seconds of one process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float | None:
    """The process's resident-memory high-water mark (VmHWM), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return found


def tree_cpu(pid: int) -> float | None:
    """CPU seconds of a process and every descendant still running (the embedded endpoint's
    work is done by its granian child's worker), or None once the process is gone."""
    own = cpu_of(pid)
    if own is None:
        return None
    return own + sum(tree_cpu(child) or 0.0 for child in children_of(pid))


@dataclass
class CpuSampler:
    """Samples `roots` and their children; `roots` and `children` give the CPU seen so far,
    `children_peak_rss_mb` the largest memory high-water mark of any child."""

    interval: float = 0.2
    _roots: dict[int, float] = field(default_factory=dict)
    _children: dict[int, float] = field(default_factory=dict)
    children_peak_rss_mb: float = 0.0
    _task: asyncio.Task[None] | None = None

    def watch(self, pids: Iterable[int]) -> None:
        for pid in pids:
            self._roots.setdefault(pid, 0.0)
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def sample(self) -> None:
        for pid in list(self._roots):
            if (seconds := cpu_of(pid)) is not None:
                self._roots[pid] = seconds
            for child in children_of(pid):
                if (seconds := cpu_of(child)) is not None:
                    self._children[child] = seconds
                self.children_peak_rss_mb = max(self.children_peak_rss_mb, peak_rss_mb(child) or 0.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sample()

    @property
    def roots(self) -> float:
        return sum(self._roots.values())

    @property
    def children(self) -> float:
        return sum(self._children.values())

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)
