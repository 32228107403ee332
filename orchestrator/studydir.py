"""The study directory: the one database every executor of a study shares (this process,
parallel slots, Slurm array tasks, Kubernetes pods), and the one owner of its layout::

    manifest.json         every run's status (manifest.py rewrites it under .manifest.lock)
    .lock                 held (flock) by the one llem process that runs the study
    study.yaml            the study file it was planned from (study.yaml.before-<time>: earlier ones)
    host.json             the planning host's facts, and each resume's
    experiments.json      every experiment's resolved config
    runs/<run id>/        experiment.json, result.json or error.json, container.log, heartbeat,
                          timeseries.parquet, nvml-trace.json, .metrics-cache.json;
                          attempts/<n>/: an earlier attempt's files
    claims/<run id>       who runs it now (claims.py)
    workers/slot<i>.log   each parallel slot's log (parallel.py)
    slurm/                the job array's script and its tasks' output (slurm.py)
    summary.json, summary.csv, summary.parquet, runs.csv, runs.parquet, report.html

Whatever llem reads back from it comes through here, each file within a bound
(:func:`yamlsafe.read_bytes`): the manifest (one reader, one message for a missing, unreadable
or damaged one), ``result.json`` as an :class:`ExperimentResult` (one typed reader: a field
renamed in the model fails loudly instead of blanking a metric), host.json, experiments.json
and each run's request. And here is the one rule for a study's final status (:func:`final_status`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic_core import from_json

from llem_agent.contract import (
    ERROR_FILE,
    EXPERIMENT_FILE,
    HEARTBEAT_FILE,
    RAW_TRACE_FILE,
    RESULT_FILE,
    TELEMETRY_FILE,
    ExperimentResult,
    write_atomic,
)

from .errors import ConfigError, EnvironmentProblem
from .manifestmodel import Manifest, StudyStatus, utc_now
from .words import plural
from .yamlsafe import Unreadable, read_bytes

MANIFEST_FILE = "manifest.json"
MANIFEST_LOCK = ".manifest.lock"
STUDY_LOCK = ".lock"
STUDY_COPY = "study.yaml"
HOST_FILE = "host.json"
EXPERIMENTS_FILE = "experiments.json"
RUNS_DIR = "runs"
ATTEMPTS_DIR = "attempts"
CONTAINER_LOG = "container.log"
METRICS_CACHE = ".metrics-cache.json"
CLAIMS_DIR = "claims"
WORKERS_DIR = "workers"
SLURM_DIR = "slurm"
SLURM_SCRIPT = "job.sbatch"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
RUNS_CSV = "runs.csv"
RUNS_PARQUET = "runs.parquet"
REPORT_FILE = "report.html"
# What is read back is bounded: a million-run manifest is some 500 MB, a result holding every
# token time of a million requests about as much; nothing real comes near 1 GiB.
MAX_JSON_BYTES = 1 << 30
# What an agent writes beside its result: a heartbeat is a few hundred bytes, an error a message
# and a traceback. Read bounded: the run directory is written by the container.
MAX_HEARTBEAT_BYTES = 64 << 10
MAX_ERROR_BYTES = 4 << 20
# Every status but "running" ends a study (for now: --resume, or another worker, may go on).
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "interrupted", "circuit_open", "timed_out"})


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON in ``path``, or None when it is missing, unreadable, over ``limit`` or not JSON.

    Parsed by pydantic-core (already here for the contract): six times faster than the standard
    library on result.json files, which carry every request's token times."""
    try:
        data = read_bytes(path, path.name, limit)
        return None if data is None else from_json(data)
    except (ConfigError, ValueError):
        return None


@dataclass(frozen=True)
class RunDir:
    """``runs/<run id>/``: what one run's agent and runner leave."""

    path: Path
    run_id: str

    @property
    def request_file(self) -> Path:
        return self.path / EXPERIMENT_FILE

    @property
    def result_file(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def error_file(self) -> Path:
        return self.path / ERROR_FILE

    @property
    def log_file(self) -> Path:
        return self.path / CONTAINER_LOG

    @property
    def heartbeat_file(self) -> Path:
        return self.path / HEARTBEAT_FILE

    @property
    def telemetry_file(self) -> Path:
        return self.path / TELEMETRY_FILE

    @property
    def trace_file(self) -> Path:
        return self.path / RAW_TRACE_FILE

    @property
    def metrics_cache(self) -> Path:
        return self.path / METRICS_CACHE

    def attempt(self, n: int) -> Path:
        """Where attempt ``n``'s files are kept once another attempt runs."""
        return self.path / ATTEMPTS_DIR / str(n)

    def read_result(self) -> tuple[ExperimentResult | None, str | None]:
        """The run's result.json, or why there is no usable one (missing, unreadable, not a valid
        result, another run's): the one reader of results, for collecting a run, resuming a
        study, aggregating and reporting it."""
        try:
            data = read_bytes(self.result_file, RESULT_FILE, MAX_JSON_BYTES)
        except Unreadable as exc:
            return None, f"{RESULT_FILE} cannot be read ({exc.reason})"
        if data is None:
            return None, f"{RESULT_FILE} is missing"
        try:
            result = ExperimentResult.model_validate_json(data)
        except ValueError as exc:
            return None, f"{RESULT_FILE} is not a valid result: {exc}"
        if result.run_id != self.run_id:
            return None, f"{RESULT_FILE} belongs to run {result.run_id}"
        return result, None

    def request_config(self) -> dict[str, Any] | None:
        """The experiment config the run was asked to measure (its experiment.json), if readable."""
        request = read_json(self.request_file)
        config = request.get("config") if isinstance(request, dict) else None
        return config if isinstance(config, dict) else None


@dataclass(frozen=True)
class FinalStatus:
    """How a study ended, and what is left (``manifest.history``'s ``detail``)."""

    status: StudyStatus
    detail: str


def final_status(
    statuses: Iterable[str], stopped: StudyStatus | None = None, held: Iterable[str] = (), note: str | None = None
) -> FinalStatus | None:
    """The one rule for a study's final status.

    ``statuses``: every run's status in the manifest now. ``stopped``: why the executor stopped,
    None when it ran out of runs it could claim, ``interrupted`` (a signal, a dead process),
    ``circuit_open`` or ``timed_out`` (a policy). ``held``: the runs other live workers hold.
    A study that ran out is ``completed`` when every run completed, else ``failed``; a stopped
    one takes the reason. None when it is not this executor's to conclude: it ran out or was
    interrupted while other workers hold runs (they go on, and the last of them concludes).
    ``note`` ends the detail (``no worker concluded``)."""
    runs = list(statuses)
    others = sorted(held)
    if others and stopped in (None, "interrupted"):
        return None
    done = sum(1 for s in runs if s == "completed")
    status: StudyStatus = stopped or ("completed" if done == len(runs) else "failed")
    left: dict[str, int] = {}
    for s in runs:
        if s != "completed":
            left[s] = left.get(s, 0) + 1
    detail = f"{done} of {plural(len(runs), 'run')} completed"
    if left:
        detail += "; " + ", ".join(f"{n} {s}" for s, n in sorted(left.items()))
    if others:
        detail += f"; {len(others)} held by other workers ({', '.join(others)})"
    if note:
        detail += f"; {note}"
    return FinalStatus(status, detail)


@dataclass(frozen=True)
class StudyDir:
    """One study directory: where each of its files is, and the one reader of each."""

    path: Path

    # --- the layout ---------------------------------------------------------------------

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def manifest_lock(self) -> Path:
        return self.path / MANIFEST_LOCK

    @property
    def lock_file(self) -> Path:
        return self.path / STUDY_LOCK

    @property
    def study_copy(self) -> Path:
        return self.path / STUDY_COPY

    @property
    def host_file(self) -> Path:
        return self.path / HOST_FILE

    @property
    def design_file(self) -> Path:
        return self.path / EXPERIMENTS_FILE

    @property
    def runs_dir(self) -> Path:
        return self.path / RUNS_DIR

    @property
    def claims_dir(self) -> Path:
        return self.path / CLAIMS_DIR

    @property
    def workers_dir(self) -> Path:
        return self.path / WORKERS_DIR

    @property
    def slurm_dir(self) -> Path:
        return self.path / SLURM_DIR

    @property
    def slurm_script(self) -> Path:
        return self.slurm_dir / SLURM_SCRIPT

    @property
    def report_file(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def summary_files(self) -> tuple[Path, Path, Path, Path, Path]:
        """summary.json, summary.csv, summary.parquet, runs.csv, runs.parquet."""
        p = self.path
        return p / SUMMARY_JSON, p / SUMMARY_CSV, p / SUMMARY_PARQUET, p / RUNS_CSV, p / RUNS_PARQUET

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.path / RUNS_DIR / run_id, run_id)

    def claim_file(self, run_id: str) -> Path:
        return self.claims_dir / run_id

    def worker_log(self, slot: int) -> Path:
        return self.workers_dir / f"slot{slot}.log"

    def earlier_copy(self, stamp: str) -> Path:
        """Where a resume from an edited study file keeps the copy it replaces."""
        return self.path / f"{STUDY_COPY}.before-{stamp}"

    def is_study(self) -> bool:
        """Whether this is a study directory at all (it has a manifest, readable or not)."""
        return self.manifest_file.exists()

    # --- the manifest: the one reader -----------------------------------------------------

    def manifest(self) -> Manifest:
        """The manifest; ConfigError, in one line, when it is missing, unreadable or damaged."""
        return self.manifest_and_digest()[0]

    def manifest_and_digest(self) -> tuple[Manifest, str]:
        """The manifest and the SHA-256 of its bytes (summary.json records which it summarised)."""
        found = self._read_manifest()
        if found is None:
            raise ConfigError(f"{self.path} is not a llem study directory (no {MANIFEST_FILE})")
        return found

    def manifest_if_present(self) -> Manifest | None:
        """The manifest, or None where there is none (yet); ConfigError when unreadable or damaged."""
        found = self._read_manifest()
        return None if found is None else found[0]

    def poll_manifest(self) -> Manifest | None:
        """The manifest as it is now, or None when it cannot be read (for following a study)."""
        try:
            return self.manifest_if_present()
        except ConfigError:
            return None

    def _read_manifest(self) -> tuple[Manifest, str] | None:
        path = self.manifest_file
        try:
            raw = read_bytes(path, MANIFEST_FILE, MAX_JSON_BYTES)
        except Unreadable as exc:
            raise ConfigError(f"{path}: cannot read it ({exc.reason})") from None
        if raw is None:
            return None
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValueError:
            raise ConfigError(
                f"{path} is damaged (not a manifest llem can read); each completed run's result.json is still "
                f"under {self.runs_dir}"
            ) from None
        return manifest, hashlib.sha256(raw).hexdigest()

    # --- the other files read back ---------------------------------------------------------

    def host(self) -> dict[str, Any] | None:
        """host.json: the facts of the host the study was planned on (and of each resume)."""
        facts = read_json(self.host_file)
        return facts if isinstance(facts, dict) else None

    def design(self) -> dict[str, Any] | None:
        """experiments.json: every experiment's resolved config."""
        design = read_json(self.design_file)
        return design if isinstance(design, dict) else None

    def completed_results(self, manifest: Manifest) -> Iterator[tuple[str, ExperimentResult]]:
        """Each completed run's result, where it is readable, in manifest order."""
        for entry in manifest.runs:
            if entry.status == "completed":
                result = self.run(entry.run_id).read_result()[0]
                if result is not None:
                    yield entry.run_id, result

    def lost_results(self, manifest: Manifest) -> dict[str, str]:
        """The completed runs whose result is missing or unusable now, with why (a resume runs
        them again)."""
        lost = {}
        for entry in manifest.runs:
            if entry.status == "completed":
                problem = self.run(entry.run_id).read_result()[1]
                if problem is not None:
                    lost[entry.run_id] = problem
        return lost

    # --- creating and resuming ---------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, name: str) -> StudyDir:
        """A new, empty study directory ``<root>/<name>_<UTC time>`` (``-2``, ``-3``, ... when
        that exists already)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for attempt in range(1, 100):
            path = root / (f"{name}_{stamp}" if attempt == 1 else f"{name}_{stamp}-{attempt}")
            try:
                root.mkdir(parents=True, exist_ok=True)
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
            except OSError as exc:
                raise EnvironmentProblem(
                    f"cannot create a study directory under {root}: {exc.strerror or exc}"
                ) from None
        raise EnvironmentProblem(f"cannot create a new study directory under {root}")

    def copy_study_file(self, source: Path) -> None:
        """Make study.yaml a copy of ``source``: what the study's workers run. A resume from an
        edited file (the same design, other runners or images) keeps the earlier copy beside it."""
        copy = self.study_copy
        try:
            if copy.exists() and copy.read_bytes() == source.read_bytes():
                return
            if copy.exists():
                copy.rename(self.earlier_copy(utc_now().replace(":", "")))
            shutil.copyfile(source, copy)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot write into {self.path}: {exc.strerror or exc}") from None

    def write_host(self, facts: dict[str, Any]) -> None:
        """host.json of a new study: the planning host's facts."""
        self._write(self.host_file, json.dumps(facts, indent=2))

    def add_resumed_host(self, facts: dict[str, Any]) -> None:
        """host.json keeps the host the study was planned on and gains, per resume, the facts of
        the host that resume runs on (``resumed``): a resumed study may run elsewhere."""
        known = self.host() or {}
        known["resumed"] = [*known.get("resumed", []), facts]
        self._write(self.host_file, json.dumps(known, indent=2))

    def _write(self, path: Path, text: str) -> None:
        try:
            write_atomic(path, text)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot write into {self.path}: {exc.strerror or exc}") from None


def study_dirs(root: Path, pattern: str = "*") -> Iterator[tuple[Manifest, Path]]:
    """Every study directory under ``root`` (matching ``pattern``) with a readable manifest."""
    for path in root.glob(f"{pattern}/{MANIFEST_FILE}"):
        found = StudyDir(path.parent).poll_manifest()
        if found is not None:
            yield found, path.parent


def newest_study(root: Path) -> Path:
    """The most recently created study directory under ``root``."""
    found = [(manifest.created_at, str(path)) for manifest, path in study_dirs(root)]
    if not found:
        raise ConfigError(f"no study directories under {root}; run a study first or name one")
    return Path(max(found)[1])


def newest_unfinished(root: Path, name: str) -> Path:
    """The newest study directory of ``name`` under ``root`` whose study did not complete."""
    candidates = [
        (manifest.created_at, path)
        for manifest, path in study_dirs(root, f"{name}_*")
        if manifest.study_name == name and manifest.status != "completed"
    ]
    if not candidates:
        raise ConfigError(f"no unfinished study named '{name}' under {root}; nothing to resume")
    return max(candidates)[1]
