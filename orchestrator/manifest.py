"""``manifest.json``: the status of every run of a study, rewritten atomically on each change
(its models are in manifestmodel.py; studydir.py is its one reader)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from llem_agent.contract import write_atomic

from .claims import FileMutex
from .errors import EnvironmentProblem
from .manifestmodel import (
    CLAIMABLE,
    MANIFEST_SCHEMA_VERSION,
    Manifest,
    RunEntry,
    RunFailure,
    RunStatus,
    SkippedEntry,
    StudyStatus,
    utc_now,
)
from .studydir import MANIFEST_FILE, StudyDir, study_dirs


class ManifestStore:
    """One study's manifest; every mutation is persisted before it returns.

    Several processes may run one study (parallel runs, Slurm array tasks, Kubernetes pods):
    each change is a read-modify-write of the file under a lock file that works on NFS, so
    no worker's update is lost to another's.
    """

    def __init__(self, study_dir: Path, manifest: Manifest) -> None:
        self.dir = StudyDir(study_dir)
        self.path = self.dir.manifest_file
        self.manifest = manifest
        self._mutex = FileMutex(self.dir.manifest_lock)

    def save(self) -> None:
        self.manifest.updated_at = utc_now()
        try:
            write_atomic(self.path, self.manifest.model_dump_json(indent=2))
        except OSError as exc:
            raise EnvironmentProblem(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def publish(self) -> None:
        """Write this manifest as it is in memory (a new or resumed study, before any worker)."""
        with self._locked():
            self.save()

    def refresh(self) -> Manifest:
        """The manifest as the other workers left it."""
        with self._locked():
            self._reload()
        return self.manifest

    def update_run(self, run_id: str, **changes: object) -> RunEntry:
        self.update_runs({run_id: changes})
        return self.manifest.run(run_id)

    def update_runs(self, changes: dict[str, dict[str, object]]) -> None:
        """Change several runs in one read-modify-write (one lock, one write for them all)."""
        with self._rewrite() as manifest:
            for run_id, fields in changes.items():
                entry = manifest.run(run_id)
                for key, value in fields.items():
                    setattr(entry, key, value)

    def set_status(self, status: StudyStatus, detail: str | None = None) -> None:
        """Set the study's status; every earlier status stays in ``history``. ``detail`` says what
        is left (a final status); the same status with the same detail twice in a row (two workers
        concluding at once) is recorded once."""
        with self._rewrite() as manifest:
            last = manifest.history[-1] if manifest.history else {}
            if detail is not None and manifest.status == status and last.get("detail") == detail:
                return
            manifest.status = status
            manifest.history.append({"status": status, "at": utc_now(), **({"detail": detail} if detail else {})})

    def note(self, **fields: str) -> None:
        """Add an event to the study's ``history`` (a Slurm submission, say)."""
        with self._rewrite() as manifest:
            manifest.history.append({**fields, "at": utc_now()})

    @contextlib.contextmanager
    def _rewrite(self) -> Iterator[Manifest]:
        """Read the manifest as the other workers left it, change it, write it: under the lock."""
        with self._locked():
            self._reload()
            yield self.manifest
            self.save()

    def _reload(self) -> None:
        """The manifest as the file has it (the one in memory while there is no file yet)."""
        found = self.dir.manifest_if_present()
        if found is not None:
            self.manifest = found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            with self._mutex:
                yield
        except (TimeoutError, PermissionError) as exc:
            raise EnvironmentProblem(f"cannot lock {self.path}: {exc}") from None

    @classmethod
    def attach(cls, study_dir: Path) -> ManifestStore:
        """Join the study as it is (a worker, a follower): its manifest, by the one reader."""
        return cls(study_dir, StudyDir(study_dir).manifest())

    @staticmethod
    def load(study_dir: Path) -> Manifest:
        """The study's manifest (:meth:`StudyDir.manifest`: ConfigError, in one line, when it is
        missing, unreadable or damaged)."""
        return StudyDir(study_dir).manifest()


class ProgressWatch:
    """Follows a manifest other processes write (workers, Slurm tasks): says (completed, total)
    whenever it changes."""

    def __init__(self, study_dir: Path, on_progress: Callable[[int, int], None]) -> None:
        self.study_dir, self.on_progress = study_dir, on_progress
        self._last: tuple[int, int] | None = None

    def poll(self) -> Manifest | None:
        """The manifest now (None while it cannot be read), reporting progress if it moved."""
        manifest = StudyDir(self.study_dir).poll_manifest()
        if manifest is None:
            return None
        now = (sum(1 for e in manifest.runs if e.status == "completed"), len(manifest.runs))
        if now != self._last:
            self._last = now
            self.on_progress(*now)
        return manifest


# The models are manifestmodel.py's, MANIFEST_FILE and study_dirs the study directory's
# (studydir.py): all named here too, for callers of old.
__all__ = [
    "CLAIMABLE",
    "MANIFEST_FILE",
    "MANIFEST_SCHEMA_VERSION",
    "Manifest",
    "ManifestStore",
    "ProgressWatch",
    "RunEntry",
    "RunFailure",
    "RunStatus",
    "SkippedEntry",
    "StudyStatus",
    "study_dirs",
    "utc_now",
]
