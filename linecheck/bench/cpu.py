"""Where the machine's CPU goes during an end-to-end run: CPU seconds of every process,
grouped (the workers, the broker, PostgreSQL, Redis, the bench itself, everything else),
plus the cores' idle time, between two snapshots. Divided by the boards decided, it says
what each part costs per board and so what bounds ``e2e_over_raw``: the raw processes
have the cores to themselves, the workers share them with everything listed here."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import psutil

GROUPS = ("worker", "broker", "postgres", "redis", "bench", "other")


def _group(proc: psutil.Process, workers: set[int]) -> str:
    """Which part of the pipeline a process is (by pid for the workers and their inspection
    children, by executable name for the servers, embedded or local)."""
    if proc.pid in workers or proc.ppid() in workers:
        return "worker"
    if proc.pid == os.getpid():
        return "bench"
    name = proc.name().lower()
    if "tansu" in name or "kafka" in name or "redpanda" in name:
        return "broker"
    if name.startswith("postgres") or name == "postmaster":
        return "postgres"
    if name.startswith("redis-server"):
        return "redis"
    return "other"


@dataclass(frozen=True)
class CpuSnapshot:
    by_group: dict[str, float]  # CPU seconds (user + system) so far, summed per group
    idle_s: float  # the machine's idle CPU seconds so far (all cores)


def snapshot(workers: set[int]) -> CpuSnapshot:
    """CPU seconds so far of every process on this machine, by group. ``workers``: the
    worker processes' pids (their children count as workers too)."""
    seconds: Counter[str] = Counter()
    for proc in psutil.process_iter():
        try:
            times = proc.cpu_times()
            seconds[_group(proc, workers)] += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone or not ours to read: left out of both snapshots alike
    return CpuSnapshot({g: seconds[g] for g in GROUPS}, psutil.cpu_times().idle)


def ms_per_board(before: CpuSnapshot, after: CpuSnapshot, boards: int) -> dict[str, float]:
    """CPU ms per board of each group between the snapshots, and ``idle`` (the cores' idle
    ms per board: capacity the pipeline left unused)."""
    out = {g: max(0.0, after.by_group[g] - before.by_group[g]) * 1e3 / boards for g in GROUPS}
    out["idle"] = max(0.0, after.idle_s - before.idle_s) * 1e3 / boards
    return out
