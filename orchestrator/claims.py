"""Claiming a run: the one protocol every executor uses (this process, threads, Slurm array
tasks, Kubernetes pods), so that any mix of them can share one study directory.

Safe on NFS, where flock is not: a claim is a file made by exclusive create (``O_CREAT |
O_EXCL``, atomic on NFSv3+ and every local file system) holding its owner's token (worker,
host, pid, boot id, the process's start time). The owner refreshes the file's mtime while it
works (and makes it again should it vanish). A claim can be broken when it was not refreshed for
``stale_after_s`` (a cancelled task, a lost node), when its owner is a process of this host
that is gone, or when it holds no token a few seconds after it was made (its writer was killed
between create and write).

Breaking is safe against a second breaker: whoever breaks the claim it judged first makes a
break token named after that exact file (its inode and content) by exclusive create, looks
again, renames the claim aside and checks that what it renamed is the file it judged; anything
else is put back. Of two workers breaking one claim, one wins and the other gives up; neither
ever removes the fresh claim the winner made. The same mechanism, held for milliseconds,
serialises read-modify-write updates of the manifest.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .studydir import StudyDir

DEFAULT_STALE_AFTER_S = 300.0  # a worker refreshes its claims every stale_after / 10
GARBAGE_GRACE_S = 5.0  # a claim holding no token this long after it was made: its writer died
BREAK_TOKEN_STALE_S = 30.0  # a break takes milliseconds; a token this old belongs to a dead breaker
_BREAK, _ASIDE = ".break-", ".broken-"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        return "-"


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state first); [] where /proc cannot say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ("-" where /proc cannot say): with the
    boot id it tells a live owner from a later process that got the same pid."""
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else "-"


@functools.lru_cache(maxsize=4)
def _identity(pid: int) -> str:  # keyed by pid: a forked child is another owner
    return f"{socket.gethostname()}:{pid}:{_boot_id()}:{_process_start(pid)}"


def owner_token(worker: str | None = None) -> str:
    """Unique per claim: the worker's name, its host, pid, boot id and start time, and a random part."""
    return f"{worker or 'llem'}@{_identity(os.getpid())}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Owner:
    """Who wrote a token: ``worker@host:pid[:boot:start]:random`` (tokens of earlier llem
    versions have no boot id or start time)."""

    worker: str
    host: str
    pid: int
    boot: str = "-"
    start: str = "-"

    @staticmethod
    def parse(token: str | None) -> Owner | None:
        if not token or "@" not in token or "\n" in token.strip():
            return None
        worker, _, rest = token.strip().rpartition("@")
        parts = rest.split(":")
        if len(parts) not in (3, 5) or not parts[1].isdigit() or not parts[0]:
            return None
        boot, start = (parts[2], parts[3]) if len(parts) == 5 else ("-", "-")
        return Owner(worker, parts[0], int(parts[1]), boot, start)

    def dead(self) -> bool:
        """A process of this host that is gone (killed -9, say), or of an earlier boot of it.
        Owners on other hosts are judged by staleness alone."""
        if self.host != socket.gethostname():
            return False
        if self.boot != "-" and _boot_id() not in ("-", self.boot):
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # someone else's live process, unless the pid has been reused since
        fields = _proc_stat(self.pid)
        if fields[:1] == ["Z"]:
            return True  # killed, not yet reaped by its parent
        return self.start != "-" and len(fields) > 19 and fields[19] != self.start


def owner_dead(token: str | None) -> bool:
    """The token's writer was a process of this host that is gone: no need to wait for staleness."""
    owner = Owner.parse(token)
    return owner is not None and owner.dead()


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


@dataclass(frozen=True)
class Seen:
    """One look at a claim file: which file it is (inode, content) and how old."""

    inode: tuple[int, int]
    content: str
    age_s: float

    @property
    def key(self) -> str:
        """Names this exact file, whatever is at its path later."""
        return hashlib.sha1(f"{self.inode}:{self.content}".encode(), usedforsecurity=False).hexdigest()[:16]

    def why_free(self, stale_after_s: float) -> str | None:
        """Why the claim seen may be broken ('stale', 'dead', 'garbage'); None while it holds."""
        owner = Owner.parse(self.content)
        if owner is None:
            return "garbage" if self.age_s >= GARBAGE_GRACE_S else None
        if self.age_s >= stale_after_s:
            return "stale"
        return "dead" if owner.dead() else None

    def describe(self) -> str:
        owner = Owner.parse(self.content)
        if owner is None:
            return f"an unreadable claim ({len(self.content)} bytes, made {self.age_s:.0f} s ago)"
        return f"{owner.worker}@{owner.host}:{owner.pid} (refreshed {self.age_s:.0f} s ago)"


def observe(path: Path) -> Seen | None:
    """What is at ``path`` now; None when nothing is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        stat = os.fstat(fd)
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return Seen((stat.st_dev, stat.st_ino), data.decode("utf-8", "replace"), time.time() - stat.st_mtime)


def age_s(path: Path) -> float | None:
    """Seconds since ``path`` was last refreshed; None when it does not exist."""
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def _take(path: Path, seen: Seen) -> bool:
    """Remove ``path`` if it is still exactly the file ``seen``; put back anything else."""
    aside = path.with_name(f"{path.name}{_ASIDE}{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    got = observe(aside)
    if got is None or got.inode != seen.inode or got.content != seen.content:
        with contextlib.suppress(FileExistsError, FileNotFoundError):
            os.link(aside, path)  # not ours to break: back where it was (unless its owner made it anew)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(aside)
    return True


def _break_token(path: Path, seen: Seen, token: str) -> Path | None:
    """The exclusive right to break the file ``seen`` at ``path``; None when another breaker has it."""
    name = path.with_name(f"{path.name}{_BREAK}{seen.key}")
    if create_exclusive(name, token + "\n"):
        return name
    held = observe(name)  # a breaker that died holding it leaves it behind
    if held is None or not (held.age_s >= BREAK_TOKEN_STALE_S or owner_dead(held.content)):
        return None
    if _take(name, held) and create_exclusive(name, token + "\n"):
        return name
    return None


def break_claim(path: Path, seen: Seen, stale_after_s: float) -> str | None:
    """Break the claim ``seen`` at ``path`` if it may be broken and nobody broke or renewed it
    since; why it was free ('stale', 'dead', 'garbage') when this call broke it, else None."""
    if seen.why_free(stale_after_s) is None:
        return None
    token = _break_token(path, seen, owner_token())
    if token is None:
        return None
    try:
        now = observe(path)  # under the token: the same file, and still free?
        if now is None or now.inode != seen.inode or now.content != seen.content:
            return None
        why = now.why_free(stale_after_s)
        if why is None or not _take(path, now):
            return None
        return why
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(token)


def break_if_stale(path: Path, stale_after_s: float) -> bool:
    """Remove ``path`` when it may be broken (stale, its owner dead, or no token in it); True when
    this call did."""
    seen = observe(path)
    return seen is not None and break_claim(path, seen, stale_after_s) is not None


def read_owner(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, UnicodeDecodeError):
        return None


class Claim:
    """A run this worker holds; ``held()`` says whether it still does (nobody took it over).
    ``broke`` says why the claim it replaced was free ('stale', 'dead', 'garbage'), if any."""

    def __init__(self, path: Path, run_id: str, token: str, broke: str | None = None) -> None:
        self.path, self.run_id, self.token, self.broke = path, run_id, token, broke

    def held(self) -> bool:
        """True while the claim file holds this token. A claim file that vanished (``claims/``
        deleted by hand) is made again: nobody else took the run, so it is still this owner's."""
        owner = read_owner(self.path)
        if owner is None and age_s(self.path) is None:
            return self._remake()
        return owner == self.token

    def refresh(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            self._remake()

    def _remake(self) -> bool:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if create_exclusive(self.path, self.token + "\n"):
                return True
        return read_owner(self.path) == self.token

    def release(self) -> None:
        if read_owner(self.path) == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class ClaimBoard:
    """The claims of one study directory (``<study>/claims/<run id>``)."""

    def __init__(self, study_dir: Path, worker: str | None = None, stale_after_s: float = DEFAULT_STALE_AFTER_S):
        self.study = StudyDir(study_dir)
        self.dir = self.study.claims_dir
        self.worker = worker
        self.stale_after_s = stale_after_s

    def path(self, run_id: str) -> Path:
        return self.study.claim_file(run_id)

    def claim(self, run_id: str) -> Claim | None:
        """Claim ``run_id``; None when a live worker holds it (or another breaker won it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(run_id)
        token = owner_token(self.worker)
        if create_exclusive(path, token + "\n"):
            return Claim(path, run_id, token)
        seen = observe(path)
        if seen is None:  # released between our two looks
            return Claim(path, run_id, token) if create_exclusive(path, token + "\n") else None
        why = break_claim(path, seen, self.stale_after_s)
        if why is not None and create_exclusive(path, token + "\n"):
            return Claim(path, run_id, token, broke=why)
        return None

    def holder(self, run_id: str) -> str | None:
        """Who holds ``run_id`` and how recently it said so; None when nobody may be waited for
        (no claim, or one that is stale, of a dead process, or unreadable for a while)."""
        seen = observe(self.path(run_id))
        if seen is None or seen.why_free(self.stale_after_s) is not None:
            return None
        return seen.describe()

    def live(self, run_id: str) -> bool:
        """A worker holds ``run_id``, has refreshed its claim recently and is not known dead."""
        return self.holder(run_id) is not None

    def live_claims(self) -> dict[str, str]:
        """Every run held by a live claim now, with who holds it."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return {}
        found = {}
        for name in names:
            if _BREAK in name or _ASIDE in name or name.startswith("."):
                continue
            holder = self.holder(name)
            if holder is not None:
                found[name] = holder
        return found

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
