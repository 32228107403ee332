"""Claiming a run: the one protocol every executor uses (this process, threads, Slurm array
tasks, Kubernetes pods), so that any mix of them can share one study directory.

Safe on NFS, where flock is not: a claim is a file made by exclusive create (``O_CREAT |
O_EXCL``, atomic on NFSv3+ and every local file system) holding its owner's token. The owner
refreshes the file's mtime while it works; a claim not refreshed for ``stale_after_s`` belongs
to a dead worker (a cancelled task, a lost node) and is broken by ``rename`` (atomic: of two
workers breaking it, one rename succeeds), after which the run can be claimed again. The same
mechanism, held for milliseconds, serialises read-modify-write updates of the manifest.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

CLAIMS_DIR = "claims"
MANIFEST_LOCK = ".manifest.lock"
DEFAULT_STALE_AFTER_S = 300.0  # a worker refreshes its claims every stale_after / 10


def owner_token(worker: str | None = None) -> str:
    """Unique per claim: the worker's name, its host and pid, and a random part."""
    return f"{worker or 'llem'}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def owner_dead(token: str | None) -> bool:
    """The owner was a process of this host that is gone (killed -9, say): no need to wait
    for its claim to go stale. Owners on other hosts are judged by staleness alone."""
    if not token or "@" not in token:
        return False
    host, _, rest = token.rpartition("@")[2].partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def create_exclusive(path: Path, content: str) -> bool:
    """Create ``path`` holding ``content``; False when it exists (someone else holds it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o664)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def age_s(path: Path) -> float | None:
    """Seconds since ``path`` was last refreshed; None when it does not exist."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def break_if_stale(path: Path, stale_after_s: float) -> bool:
    """Remove ``path`` when it has not been refreshed for ``stale_after_s`` or its owner died on
    this host; True when this call did."""
    age = age_s(path)
    if age is None or (age < stale_after_s and not owner_dead(read_owner(path))):
        return False
    broken = path.with_name(f"{path.name}.broken-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, broken)  # of two breakers, exactly one gets here
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        broken.unlink()
    return True


def read_owner(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, UnicodeDecodeError):
        return None


class Claim:
    """A run this worker holds; ``held()`` says whether it still does (nobody broke it)."""

    def __init__(self, path: Path, run_id: str, token: str) -> None:
        self.path, self.run_id, self.token = path, run_id, token

    def held(self) -> bool:
        return read_owner(self.path) == self.token

    def refresh(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)

    def release(self) -> None:
        if self.held():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class ClaimBoard:
    """The claims of one study directory (``<study>/claims/<run id>``)."""

    def __init__(self, study_dir: Path, worker: str | None = None, stale_after_s: float = DEFAULT_STALE_AFTER_S):
        self.dir = study_dir / CLAIMS_DIR
        self.worker = worker
        self.stale_after_s = stale_after_s

    def path(self, run_id: str) -> Path:
        return self.dir / run_id

    def claim(self, run_id: str) -> Claim | None:
        """Claim ``run_id``; None when a live worker holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(run_id)
        token = owner_token(self.worker)
        if create_exclusive(path, token + "\n"):
            return Claim(path, run_id, token)
        if break_if_stale(path, self.stale_after_s) and create_exclusive(path, token + "\n"):
            return Claim(path, run_id, token)
        return None

    def live(self, run_id: str) -> bool:
        """A worker holds ``run_id``, has refreshed its claim recently and is not known dead."""
        age = age_s(self.path(run_id))
        return age is not None and age < self.stale_after_s and not owner_dead(read_owner(self.path(run_id)))

    @contextlib.contextmanager
    def keep_alive(self, claim: Claim) -> Iterator[None]:
        """Refresh ``claim`` in the background while the body runs (a run can take hours)."""
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(max(self.stale_after_s / 10, 0.05)):
                claim.refresh()

        thread = threading.Thread(target=refresh, name=f"claim-{claim.run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


class FileMutex:
    """A short critical section across processes and hosts (the manifest's read-modify-write)."""

    def __init__(self, path: Path, stale_after_s: float = 30.0, timeout_s: float = 120.0) -> None:
        self.path, self.stale_after_s, self.timeout_s = path, stale_after_s, timeout_s
        self._token: str | None = None
        self._local = threading.Lock()  # threads of one process queue here first

    def __enter__(self) -> FileMutex:
        self._local.acquire()
        token, deadline, pause = owner_token(), time.monotonic() + self.timeout_s, 0.002
        while not create_exclusive(self.path, token + "\n"):
            if not break_if_stale(self.path, self.stale_after_s):
                if time.monotonic() > deadline:
                    self._local.release()
                    raise TimeoutError(f"{self.path} held for over {self.timeout_s:.0f} s")
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
        self._token = token
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._token is not None and read_owner(self.path) == self._token:
                self.path.unlink()
        finally:
            self._token = None
            self._local.release()
