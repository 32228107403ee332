"""Parallel runs on one host: N ``llem worker`` processes on disjoint device sets.

The same workers, claims and manifest as a Slurm job array, started here instead of by
sbatch: each slot gets its own GPUs (or, on a CPU host, its own cores, to which its runs are
pinned), takes their locks as any run does, and claims runs in plan order. Energy runs that
share a host still share its power supply, memory bandwidth and cooling: every run records
which other runs overlapped its measured window, and results and reports say so.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .manifest import ManifestStore, ProgressWatch, utc_now
from .results import measured_windows, overlaps
from .studydir import StudyDir

_STOP_GRACE_S = 120.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Slot:
    """One worker's devices: GPUs, or (on a CPU host) the cores its runs are pinned to."""

    gpus: tuple[int, ...]
    cpus: tuple[int, ...]

    def flags(self) -> list[str]:
        gpus = ",".join(str(g) for g in self.gpus)
        flags = [f"--gpus={gpus}"]
        if self.cpus:
            flags.append("--cpuset=" + ",".join(str(c) for c in self.cpus))
        return flags

    def describe(self) -> str:
        return ", ".join(f"gpu{g}" for g in self.gpus) or "cpu " + ",".join(str(c) for c in self.cpus)


def plan_slots(wanted: int | None, gpus: Sequence[int], need: int, cores: Sequence[int]) -> list[Slot]:
    """Disjoint device sets for ``wanted`` parallel runs (None: as many as the GPUs allow, and
    one on a CPU host, where parallel runs would share memory bandwidth)."""
    if gpus:
        fit = len(gpus) // max(need, 1)
        count = fit if wanted is None else wanted
        if count < 1 or count > fit:
            raise ConfigError(
                f"{count} parallel runs of up to {need} GPU(s) each need {count * need} GPUs; "
                f"this study may use {len(gpus)} ({list(gpus)})"
            )
        return [Slot(tuple(gpus[i * need : (i + 1) * need]), ()) for i in range(count)]
    count = 1 if wanted is None else wanted
    if count > len(cores):
        raise ConfigError(f"{count} parallel runs on CPU need a core each; this process may use {len(cores)}")
    per = len(cores) // count
    return [Slot((), tuple(cores[i * per : (i + 1) * per])) for i in range(count)]


def parse_parallel(value: str | int | None) -> int | None:
    """``--parallel N|auto`` / ``max_parallel_runs``: a count, or None for auto."""
    if value is None or value == "auto":
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--parallel expects a number or auto, got {value!r}") from None
    if count < 1:
        raise ConfigError(f"--parallel must be at least 1, got {count}")
    return count


def _tie_to_parent(parent: int) -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGTERM when this llem dies, however it dies (kill -9 included), and
    stops as on Ctrl-C: its container removed, its run marked interrupted, its claim released.
    A parent already gone by now is the same thing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(
    study_dir: Path,
    slots: Sequence[Slot],
    command: Sequence[str],
    on_progress: Callable[[int, int], None],
    poll_s: float = 0.5,
) -> list[int]:
    """Start one worker per slot, follow the manifest until they exit; their exit codes.

    Each worker runs in a session of its own: a Ctrl-C here reaches only this process, which
    asks every worker to stop once (SIGTERM: it marks its run interrupted and removes its
    container), so no worker is forced out mid-cleanup by a second signal. Should this process
    die without asking (SIGKILL), the kernel asks them (PR_SET_PDEATHSIG). Each worker's log is
    appended to: what an earlier attempt of the study logged stays.
    """
    study = StudyDir(study_dir)
    study.workers_dir.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    tie = functools.partial(_tie_to_parent, os.getpid())
    try:
        for i, slot in enumerate(slots):
            with study.worker_log(i).open("ab") as log:
                argv = [*command, "--worker-id", f"slot{i}", *slot.flags()]
                log.write(f"--- {utc_now()} {shlex.join(argv)}\n".encode())
                log.flush()
                procs.append(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=tie,  # noqa: PLW1509 - no locks taken between fork and exec
                    )
                )
        watch = ProgressWatch(study_dir, on_progress)
        while any(p.poll() is None for p in procs):
            watch.poll()
            time.sleep(poll_s)
        watch.poll()
    except KeyboardInterrupt:
        _stop(procs)
        raise
    return [p.returncode for p in procs]


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def record_overlaps(study_dir: Path) -> int:
    """Write into each run's manifest entry the runs whose measured windows overlapped its own;
    the number of runs that overlapped another."""
    store = ManifestStore.attach(study_dir)
    found = overlaps(measured_windows(study_dir, store.manifest), {e.run_id: e.host for e in store.manifest.runs})
    store.update_runs({run_id: {"overlapped_with": sorted(others)} for run_id, others in found.items()})
    return len(found)
