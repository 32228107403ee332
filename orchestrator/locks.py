"""Advisory per-device locks so concurrent studies never share a GPU, nor the CPU.

Each device has a lock file; ``flock`` (through filelock) is released by the kernel when
the holding process exits, however it exits, SIGKILL included. A run takes all of its
devices or none of them, so two studies can never deadlock holding half a set each.

The CPU is one namespace however it is split: a run pinned to cores locks each of them
(``cpu2``, ``cpu3``), and a run on the whole CPU (``cpu``) locks every core of the host as
well as ``cpu`` itself, so it excludes pinned runs and they exclude it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

DEFAULT_LOCK_DIR = Path(os.environ.get("LLEM_LOCK_DIR", "/tmp/llem-locks"))
CPU_LOCK = "cpu"


def gpu_name(index: int, simulated: bool = False) -> str:
    """A GPU's lock and device name: ``gpu0``; a simulated one's ``gpu-sim0`` (never a real GPU's lock)."""
    return f"gpu-sim{index}" if simulated else f"gpu{index}"


def lock_names(gpu_indices: Sequence[int], cpuset: Sequence[int] = (), simulated: bool = False) -> list[str]:
    """Lock file stems for a run: one per GPU (simulated GPUs have their own); on CPU one per
    core it is pinned to (parallel runs), else the single CPU lock."""
    gpus = [gpu_name(i, simulated) for i in sorted(gpu_indices)]
    return gpus or [f"{CPU_LOCK}{c}" for c in sorted(cpuset)] or [CPU_LOCK]


def host_cores() -> int:
    """Every core of the host (a container started without a cpuset runs on all of them,
    whatever this process's own affinity)."""
    return os.cpu_count() or 1


class DeviceLocks:
    """All-or-none lock over a set of device lock files."""

    def __init__(self, names: Sequence[str], lock_dir: Path = DEFAULT_LOCK_DIR) -> None:
        self.names = sorted(names)
        self.lock_dir = lock_dir
        self._held: list[FileLock] = []

    def paths(self) -> list[Path]:
        """The lock files behind ``names``: the whole CPU is every core's file and its own."""
        files = set()
        for name in self.names:
            files.add(name)
            if name == CPU_LOCK:
                files.update(f"{CPU_LOCK}{core}" for core in range(host_cores()))
        return [self.lock_dir / f"{name}.lock" for name in sorted(files)]

    def try_acquire(self) -> bool:
        """Take every lock now, or none of them; True when all are held."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):  # shared by every user of the machine, like /tmp
            os.chmod(self.lock_dir, 0o1777)
        taken: list[FileLock] = []
        for path in self.paths():
            lock = FileLock(path, mode=0o666)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                for held in taken:
                    held.release()
                return False
            taken.append(lock)
        self._held = taken
        return True

    def acquire(
        self,
        wait_s: float | None,
        poll_s: float = 0.5,
        on_wait: Callable[[list[str]], None] | None = None,
    ) -> bool:
        """Retry ``try_acquire`` until it succeeds or ``wait_s`` passes (None: forever)."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        announced = False
        while not self.try_acquire():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if on_wait and not announced:
                on_wait(self.names)
                announced = True
            time.sleep(poll_s)
        return True

    def release(self) -> None:
        for lock in reversed(self._held):
            lock.release()
        self._held = []

    def __enter__(self) -> DeviceLocks:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
