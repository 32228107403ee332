"""Facts about the container a run happened in: CPU and the cgroup limits it ran under.

Readers take a filesystem root so tests can point them at a fake /proc and /sys.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_model(root: Path = Path("/")) -> str | None:
    try:
        for line in (root / "proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def cpus_available() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def memory_limit_mb(root: Path = Path("/")) -> float | None:
    """The container's memory limit (cgroup v2, else v1); None when unlimited."""
    for name in ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= 2**60:
            return None
        return int(text) / 2**20
    return None


def cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs the cgroup may use (cgroup v2 cpu.max, else v1 cfs quota/period); None when unlimited."""
    try:
        quota, period = (root / "sys/fs/cgroup/cpu.max").read_text(encoding="utf-8").split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text(encoding="utf-8"))
        period_us = int((root / "sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 else quota_us / period_us
