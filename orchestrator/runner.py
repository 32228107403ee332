"""Where one run executes, apart from any one way of executing it: the :class:`Runner`
protocol (docker: a container; local: a host process; a fake in unit tests), how a run ended
(:class:`ContainerOutcome`), and the supervision every runner shares (a timeout, and a
heartbeat that must stay fresh: :class:`Liveness`, :func:`supervise`). The run's spec is
:class:`~.container.ContainerSpec`. The Docker SDK is used only in :mod:`.docker_runner`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .container import ContainerSpec, Mount
from .studydir import MAX_HEARTBEAT_BYTES, read_json


@dataclass(frozen=True)
class ContainerOutcome:
    """How a run's container ended. ``exit_code`` is None when it never ran to an exit."""

    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    duration_s: float
    hung: bool = False
    # The image the container ran, as the runner knows it (none for a local run): what the
    # manifest records of the attempt, not the tag it was asked for.
    image_id: str | None = None
    image_digest: str | None = None


@dataclass(frozen=True)
class Liveness:
    """How the runner decides an agent is hung: its heartbeat file went stale."""

    heartbeat: Path
    stall_timeout_s: float
    poll_s: float = 1.0
    on_poll: Callable[[], None] | None = None  # called about every poll_s while the agent runs
    on_started: Callable[[], None] | None = None  # called once, as soon as the run has started

    def stale(self, started_at: float) -> bool:
        """No beat for ``stall_timeout_s``, or for the agent's own ``patience_s`` where it said
        a measured batch takes longer (three times warm-up's slowest batch)."""
        try:
            last = self.heartbeat.stat().st_mtime
        except FileNotFoundError:
            last = started_at  # not started beating yet: count from the container's start
        silent = time.time() - last
        if silent <= self.stall_timeout_s:
            return False
        return silent > max(self.stall_timeout_s, _patience_s(self.heartbeat))


def _patience_s(heartbeat: Path) -> float:
    """The ``patience_s`` the agent wrote into its heartbeat (0 where none, or unreadable)."""
    beat = read_json(heartbeat, MAX_HEARTBEAT_BYTES)  # bounded, and never waits on a FIFO
    value = beat.get("patience_s", 0) if isinstance(beat, dict) else 0
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def supervise(
    exited: Callable[[float], bool],
    kill: Callable[[], None],
    timeout_s: float,
    liveness: Liveness | None,
    *,
    start: float,
    started_at: float,
) -> tuple[bool, bool]:
    """Wait for a run to end, whatever runs it: ``exited(seconds)`` waits at most that long and
    says whether it ended. Kills it at ``timeout_s`` (monotonic, since ``start``) or when its
    heartbeat goes stale (wall clock, since ``started_at``); polls progress in between.
    Returns (timed_out, hung)."""
    if liveness is not None and liveness.on_started is not None:
        liveness.on_started()
    while True:
        left = timeout_s - (time.monotonic() - start)
        if exited(max(0.1, min(left, liveness.poll_s if liveness else left))):
            return False, False
        timed_out = time.monotonic() - start >= timeout_s
        hung = not timed_out and liveness is not None and liveness.stale(started_at)
        if timed_out or hung:
            kill()
            return timed_out, hung
        if liveness is not None and liveness.on_poll is not None:
            liveness.on_poll()


class Runner(Protocol):
    """Where one run executes: in a container (docker) or as a host process (local); faked in
    unit tests. Who schedules the runs is the study loop's business, not the runner's."""

    kind: str

    def agent_path(self, mount: Mount) -> str:
        """Where the agent sees a mounted host directory."""

    def check(self, images: Iterable[str]) -> None: ...

    def describe(self, images: Iterable[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]: ...

    def run(
        self, spec: ContainerSpec, timeout_s: float, log_path: Path, liveness: Liveness | None = None
    ) -> ContainerOutcome: ...


class PullProgress(Protocol):
    def __call__(self, image: str, done_bytes: int, total_bytes: int) -> None: ...
