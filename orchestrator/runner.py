"""Run a plan: for each run take its device locks, launch one container, collect its result."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock, Timeout
from pydantic import ValidationError

from llem_agent.contract import (
    CONTAINER_ADAPTER_DIR,
    CONTAINER_BASELINE_DIR,
    CONTAINER_ENGINE_CACHE,
    CONTAINER_MODEL_DIR,
    CONTAINER_TRT_ENGINE_DIR,
    ERROR_FILE,
    EXPERIMENT_FILE,
    HEARTBEAT_FILE,
    HUB_PROMPT_SETS,
    RESULT_FILE,
    ExperimentConfig,
    ExperimentResult,
    RunError,
    RunRequest,
    refusal_reason,
    unsupported_by_agent,
    write_atomic,
)
from orchestrator import __version__
from orchestrator.container import SECRET_ENV, build_spec, dataset_target
from orchestrator.datasets import resolve_dataset
from orchestrator.devices import assign_devices
from orchestrator.errors import ConfigError, EnvironmentProblem, Interrupted, LlemError
from orchestrator.hostinfo import host_facts
from orchestrator.launcher import ContainerOutcome, Launcher, Liveness
from orchestrator.locks import DeviceLocks, lock_names
from orchestrator.manifest import (
    MANIFEST_FILE,
    RESUMABLE,
    Manifest,
    ManifestStore,
    RunEntry,
    RunFailure,
    SkippedEntry,
    StudyStatus,
    study_dirs,
    utc_now,
)
from orchestrator.models import (
    check_hf_cache_writable,
    check_readable_by_agent,
    resolve_adapter_dir,
    resolve_model_dir,
    resolve_trt_engine_dir,
)
from orchestrator.plan import Plan, PlannedRun
from orchestrator.policy import CircuitBreaker, WallClock
from orchestrator.results import EXPERIMENTS_FILE, HOST_FILE, StudySummary, summarise, write_design
from orchestrator.userconfig import MeasurementFactors

CONTAINER_LOG = "container.log"
LABEL_EXTRAS = "io.llem.agent-extras"  # the agent extras an image was built with (Dockerfiles)
# Agent exception types that name a failure class of their own.
_ERROR_KINDS = {"GpuNotVisible": "gpu_not_visible", "OutOfMemoryError": "oom"}
STUDY_COPY = "study.yaml"


@dataclass(frozen=True)
class RunnerOptions:
    """Host settings of one invocation (CLI flags, environment), not part of the study."""

    results_root: Path
    images: dict[str, str]
    run_timeout_s: float
    gpu_indices: tuple[int, ...]
    lock_dir: Path | None
    lock_wait_s: float | None
    hf_home: Path
    baseline_cache: Path | None = None
    stall_timeout_s: float = 600.0
    sample_interval_s: float = 0.1
    container_memory: str | None = None
    pids_limit: int | None = None  # processes + threads per run container (None: no limit)
    max_consecutive_failures: int = 10
    circuit_breaker_cooldown_s: float = 60.0
    wall_clock_limit_s: float | None = None
    factors: MeasurementFactors = field(default_factory=MeasurementFactors)
    engine_cache: Path | None = None  # TensorRT-LLM engine builds, mounted into tensorrt runs
    gpu_uuids: dict[int, str] = field(default_factory=dict)  # index -> UUID of every GPU the study may use


@dataclass(frozen=True)
class RunOutcome:
    run: PlannedRun
    entry: RunEntry
    result: ExperimentResult | None


class RunnerEvents(Protocol):
    """Progress callbacks; the rich display implements them, tests may record them."""

    def run_started(self, run: PlannedRun, position: int, total: int) -> None: ...

    def run_finished(self, outcome: RunOutcome) -> None: ...

    def waiting_for_devices(self, names: list[str]) -> None: ...

    def pausing(self, seconds: float) -> None: ...

    def run_phase(self, run: PlannedRun, phase: str, detail: str) -> None: ...


def image_for(engine: str, images: dict[str, str]) -> str:
    try:
        return images[engine]
    except KeyError:
        raise EnvironmentProblem(f"no image configured for engine '{engine}' (have: {sorted(images)})") from None


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


def _new_study_dir(root: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1, 100):
        path = root / (f"{name}_{stamp}" if attempt == 1 else f"{name}_{stamp}-{attempt}")
        try:
            root.mkdir(parents=True, exist_ok=True)
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise EnvironmentProblem(f"cannot create a study directory under {root}: {exc.strerror or exc}") from None
    raise EnvironmentProblem(f"cannot create a new study directory under {root}")


def _archive_attempt(run_dir: Path, attempt: int) -> None:
    """Keep an earlier attempt's files under ``attempts/N/`` so a re-run loses nothing."""
    files = [p for p in run_dir.iterdir() if p.is_file()]
    if attempt < 1 or not files:
        return
    target = run_dir / "attempts" / str(attempt)
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        path.rename(target / path.name)


def collect(run_dir: Path, run_id: str, outcome: ContainerOutcome) -> tuple[ExperimentResult | None, RunFailure | None]:
    """Read what the agent left in ``run_dir`` and decide how the run ended."""
    result_path, error_path = run_dir / RESULT_FILE, run_dir / ERROR_FILE
    if outcome.timed_out:
        return None, RunFailure(kind="timeout", message=f"no exit within the run timeout ({outcome.duration_s:.0f} s)")
    if outcome.hung:
        return None, RunFailure(kind="hung", message="the agent stopped making progress (stale heartbeat); killed")
    if outcome.oom_killed:
        return None, RunFailure(kind="oom", message="the container was killed for exceeding its memory limit")
    if result_path.exists() and outcome.exit_code == 0:
        result, problem = read_result(run_dir, run_id)
        if problem is not None:
            return None, RunFailure(kind="corrupt_result", message=problem)
        return result, None
    if error_path.exists():
        try:
            error = RunError.model_validate_json(error_path.read_text(encoding="utf-8"))
            kind = _ERROR_KINDS.get(error.type, "agent_error")
            return None, RunFailure(kind=kind, type=error.type, message=f"{error.phase}: {error.message}")
        except (ValidationError, ValueError):
            pass
    if outcome.exit_code in (137, 143):
        return None, RunFailure(
            kind="killed", message=f"the container was killed from outside (exit {outcome.exit_code})"
        )
    return None, RunFailure(kind="no_result", message=f"container exited {outcome.exit_code} without {RESULT_FILE}")


def may_download(config: ExperimentConfig, model_dir: Path | None, adapter_dir: Path | None) -> bool:
    """Whether this run may fetch from the Hugging Face hub: a hub model, adapter or prompt set."""
    hub_adapter = config.lora is not None and config.lora.adapter_id is not None and adapter_dir is None
    return model_dir is None or hub_adapter or config.dataset.source in HUB_PROMPT_SETS


def read_result(run_dir: Path, run_id: str) -> tuple[ExperimentResult | None, str | None]:
    """A run's result.json, or why there is no usable one (missing, not a valid result, another
    run's): the one reader for collecting a run, resuming a study and reporting outcomes."""
    path = run_dir / RESULT_FILE
    try:
        result = ExperimentResult.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{RESULT_FILE} is missing"
    except (OSError, ValueError) as exc:
        return None, f"{RESULT_FILE} is not a valid result: {exc}"
    if result.run_id != run_id:
        return None, f"{RESULT_FILE} belongs to run {result.run_id}"
    return result, None


def _tree_bytes(path: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                total += _tree_bytes(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


class PhaseWatch:
    """Turns the agent's heartbeat into progress events: its phase, batches done while
    measuring, and bytes downloaded into the Hugging Face cache while loading a hub model."""

    def __init__(self, run: PlannedRun, heartbeat: Path, download_dir: Path | None, events: RunnerEvents) -> None:
        self.run, self.heartbeat, self.download_dir, self.events = run, heartbeat, download_dir, events
        self._start_bytes = _tree_bytes(download_dir) if download_dir else 0
        self._last: tuple[str, str] | None = None
        self._phase = ""
        self._phase_base = 0  # the agent's batch counter runs on across phases

    def poll(self) -> None:
        try:
            beat = json.loads(self.heartbeat.read_text(encoding="utf-8"))
            phase, progress = str(beat.get("phase", "?")), int(beat.get("progress", 0))
        except (OSError, ValueError, TypeError):
            return
        if phase != self._phase:
            self._phase, self._phase_base = phase, progress
        detail = ""
        if phase in ("warmup", "measure") and progress > self._phase_base:
            detail = f"{progress - self._phase_base} batches"
        elif phase == "load" and self.download_dir is not None:
            grown = _tree_bytes(self.download_dir) - self._start_bytes
            if grown > 0:
                detail = f"{grown / 2**20:,.1f} MiB downloaded"
        if (phase, detail) != self._last:
            self._last = (phase, detail)
            self.events.run_phase(self.run, phase, detail)


class StudyRunner:
    """Executes a plan through a launcher and keeps the manifest true at every step."""

    def __init__(
        self,
        plan: Plan,
        options: RunnerOptions,
        launcher: Launcher | Mapping[str, Launcher],
        events: RunnerEvents,
    ) -> None:
        """``launcher``: one for every engine, or one per engine (``runners:``: docker or local)."""
        self.plan = plan
        self.options = options
        self.launcher = launcher
        self.events = events
        self.study_dir: Path | None = None
        self._store: ManifestStore | None = None
        self._model_dirs: dict[int, Path | None] = {}
        self._adapter_dirs: dict[int, Path | None] = {}
        self._engine_dirs: dict[int, Path | None] = {}
        self._datasets: dict[int, Path | None] = {}
        self._study_lock: FileLock | None = None
        self.summary: StudySummary | None = None

    def preflight(self) -> None:
        """Everything that can fail before a results directory exists: settings, models, images, Docker."""
        base = self.plan.study.path.parent
        for exp in self.plan.study.experiments:
            refused = unsupported_by_agent(exp.config, exp.config.engine)
            if refused == ["engine"]:
                raise ConfigError(f"engine '{exp.config.engine}' has no agent in llem {__version__} yet")
            if refused:
                engine = exp.config.engine
                raise ConfigError(
                    f"experiment {exp.index + 1}: the {engine} agent of llem {__version__} does not apply "
                    f"{', '.join(refusal_reason(engine, p) for p in refused)}; remove it rather than get results "
                    "that ignore it"
                )
            model_dir = self._model_dirs[exp.index] = resolve_model_dir(exp.config.model, base)
            if model_dir is not None:
                check_readable_by_agent(model_dir, os.getuid())
            adapter_dir = self._adapter_dirs[exp.index] = resolve_adapter_dir(exp.config, base)
            if adapter_dir is not None:
                check_readable_by_agent(adapter_dir, os.getuid())
            dataset = self._datasets[exp.index] = resolve_dataset(exp.config, base)
            if dataset is not None:
                check_readable_by_agent(dataset.parent, os.getuid(), only=dataset)
            engine_dir = self._engine_dirs[exp.index] = resolve_trt_engine_dir(exp.config, base)
            if engine_dir is not None:
                check_readable_by_agent(engine_dir, os.getuid())
            assign_devices(exp.config, list(self.options.gpu_indices))  # raises when too few GPUs
        hub_models = sorted({e.config.model for e in self.plan.study.experiments if self._model_dirs[e.index] is None})
        if hub_models:  # downloads land in the mounted cache, written by the agent's uid
            check_hf_cache_writable(self.options.hf_home, os.getuid(), hub_models[0])
        for engine_name, images in self._images_by_engine().items():
            self.launcher_for(engine_name).check(images)
        self._check_extras()
        self._check_devices_free()

    def _check_devices_free(self) -> None:
        """With --no-wait a locked device ends the study: find out before a study directory exists."""
        lock_dir = self.options.lock_dir
        if lock_dir is None or self.options.lock_wait_s != 0:
            return
        names = sorted(
            {
                n
                for e in self.plan.study.experiments
                for n in lock_names(assign_devices(e.config, list(self.options.gpu_indices)))
            }
        )
        probe = DeviceLocks(names, lock_dir)
        if not probe.try_acquire():
            raise EnvironmentProblem(
                f"devices {names} are locked by another study (lock files in {lock_dir}); "
                "wait for it, or run without --no-wait to queue behind it"
            )
        probe.release()

    def launcher_for(self, engine: str) -> Launcher:
        """The launcher that runs ``engine``'s experiments."""
        if isinstance(self.launcher, Mapping):
            try:
                return self.launcher[engine]
            except KeyError:
                raise EnvironmentProblem(f"no runner configured for engine '{engine}'") from None
        return self.launcher

    def _images_by_engine(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for exp in self.plan.study.experiments:
            out.setdefault(exp.config.engine, set()).add(image_for(exp.config.engine, self.options.images))
        return out

    def _describe(self, images_by_engine: dict[str, set[str]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """What each engine's launcher says about itself and its images (for host.json)."""
        server: dict[str, dict[str, Any]] = {}
        images: dict[str, dict[str, Any]] = {}
        runners: dict[str, str] = {}
        for engine, refs in sorted(images_by_engine.items()):
            launcher = self.launcher_for(engine)
            runners[engine] = launcher.kind
            facts, described = launcher.describe(refs)
            server.setdefault(launcher.kind, facts)
            images |= described
        return {**server.get("docker", server.get("local", {})), "runners": runners}, images

    def _check_extras(self) -> None:
        """energy_sampler zeus/codecarbon needs an image built with that agent extra; images
        say which they have in a label (an image without the label is left to the agent)."""
        needs: dict[str, dict[str, int]] = {}
        for exp in self.plan.study.experiments:
            if exp.config.energy_sampler in ("zeus", "codecarbon"):
                image = image_for(exp.config.engine, self.options.images)
                needs.setdefault(image, {})[exp.config.energy_sampler] = exp.index
        if not needs:
            return
        described: dict[str, dict[str, Any]] = {}
        for exp in self.plan.study.experiments:
            image = image_for(exp.config.engine, self.options.images)
            if image in needs and image not in described:
                described |= self.launcher_for(exp.config.engine).describe({image})[1]
        for image, wanted in needs.items():
            labels = (described.get(image) or {}).get("labels") or {}
            if LABEL_EXTRAS not in labels:
                continue
            have = {x.strip() for x in str(labels[LABEL_EXTRAS]).split(",") if x.strip()}
            for extra, index in wanted.items():
                if extra not in have:
                    raise ConfigError(
                        f"experiment {index + 1}: energy_sampler {extra} needs an image built with "
                        f"--build-arg AGENT_EXTRAS={extra}; {image} has {', '.join(sorted(have)) or 'no extras'}"
                    )

    def _entry(self, run: PlannedRun) -> RunEntry:
        engine = run.experiment.config.engine
        local = self.launcher_for(engine).kind == "local"
        return RunEntry(
            run_id=run.run_id,
            experiment_index=run.experiment.index,
            cycle=run.cycle,
            config_hash=run.experiment.config_hash,
            image="local" if local else image_for(engine, self.options.images),
            runner="local" if local else "docker",
        )

    def _open(self, study_dir: Path, manifest: Manifest) -> Path:
        # One llem process per study directory; flock frees it however the holder dies.
        lock = FileLock(study_dir / ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise EnvironmentProblem(f"{study_dir} is being run by another llem process") from None
        self._study_lock = lock
        self._store = ManifestStore(study_dir, manifest)
        self.study_dir = study_dir
        self._store.publish()
        self._store.set_status("running")
        return study_dir

    def prepare(self) -> Path:
        """Create the study directory with a copy of the study file and an all-pending manifest."""
        study = self.plan.study
        study_dir = _new_study_dir(self.options.results_root, study.name)
        try:
            shutil.copyfile(study.path, study_dir / STUDY_COPY)
            server, images = self._describe(self._images_by_engine())
            facts = host_facts(server, images) | {"measurement": self.options.factors.as_dict()}
            write_atomic(study_dir / HOST_FILE, json.dumps(facts, indent=2))
            self._write_design(study_dir)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot write into {study_dir}: {exc.strerror or exc}") from None
        manifest = Manifest(
            study_name=study.name,
            study_id=study_dir.name,
            study_design_hash=study.design_hash,
            llem_version=__version__,
            n_cycles=self.plan.n_cycles,
            experiment_order=self.plan.order,
            shuffle_seed=self.plan.seed,
            runs=[self._entry(run) for run in self.plan.runs],
            skipped=[SkippedEntry(index=s.index, reason=s.reason) for s in study.skipped],
        )
        return self._open(study_dir, manifest)

    def _write_design(self, study_dir: Path) -> None:
        study = self.plan.study
        write_design(
            study_dir,
            study.design_hash,
            ((e.index, e.config_hash, e.config.model_dump(mode="json")) for e in study.experiments),
        )

    def resume(self, study_dir: Path) -> Path:
        """Continue an earlier study: its completed runs stay, every other run runs again.

        The study's design must not have changed (same design hash): results of different
        parameter spaces are never mixed. More cycles than before are added as new runs.
        """
        try:
            manifest = ManifestStore.load(study_dir)
        except FileNotFoundError:
            raise ConfigError(f"{study_dir} is not a llem study directory (no {MANIFEST_FILE})") from None
        except (ValueError, OSError, UnicodeDecodeError):
            raise ConfigError(
                f"{study_dir}/{MANIFEST_FILE} is damaged and cannot be resumed from; every completed run's "
                f"result.json is still under {study_dir}/runs: run the study anew (llem results reads the old "
                "directory), or restore the manifest from a backup"
            ) from None
        if manifest.study_design_hash != self.plan.study.design_hash:
            raise ConfigError(
                f"{study_dir}: the study's design changed since it ran (design hash {manifest.study_design_hash} "
                f"-> {self.plan.study.design_hash}); run it as a new study instead of mixing results"
            )
        for entry in manifest.runs:  # a completed run whose result is gone or damaged runs again
            problem = (
                read_result(study_dir / "runs" / entry.run_id, entry.run_id)[1] if entry.status == "completed" else None
            )
            if problem is not None:
                problem = problem.splitlines()[0][:160]
                entry.status = "failed"
                entry.failure = RunFailure(kind="lost_result", message=f"{problem} when the study was resumed")
                manifest.history.append(
                    {"status": "result_lost", "run": entry.run_id, "detail": problem, "at": utc_now()}
                )
        known = {entry.run_id for entry in manifest.runs}
        manifest.runs.extend(self._entry(run) for run in self.plan.runs if run.run_id not in known)
        manifest.n_cycles = max(manifest.n_cycles, self.plan.n_cycles)
        if not (study_dir / EXPERIMENTS_FILE).exists():
            self._write_design(study_dir)
        return self._open(study_dir, manifest)

    def execute(self) -> list[RunOutcome]:
        """Run every run the manifest does not hold as completed, under the study's policies.

        Ctrl-C marks the current run interrupted and raises. Returns an outcome for every
        run of the plan, earlier completed ones included.
        """
        assert self._store is not None and self.study_dir is not None, "call prepare() or resume() first"
        store = self._store
        todo = [run for run in self.plan.runs if store.manifest.run(run.run_id).status in RESUMABLE]
        execution = self.plan.study.execution
        breaker = CircuitBreaker(self.options.max_consecutive_failures, self.options.circuit_breaker_cooldown_s)
        clock = WallClock(self.options.wall_clock_limit_s)
        final: StudyStatus | None = None
        current: PlannedRun | None = None
        try:
            for position, run in enumerate(todo, start=1):
                if clock.expired():
                    final = "timed_out"
                    self._skip(todo[position - 1 :], "timed_out", "the study's wall-clock limit was reached")
                    break
                if position > 1:
                    new_cycle = run.cycle != todo[position - 2].cycle
                    self._sleep(execution.cycle_gap_seconds if new_cycle else execution.config_gap_seconds)
                current = run
                self.events.run_started(run, position, len(todo))
                outcome = self._run_one(run, clock.remaining_s())
                current = None
                self.events.run_finished(outcome)
                decision = breaker.record(outcome.entry.status == "completed")
                if decision == "abort":
                    final = "circuit_open"
                    self._skip(todo[position:], "circuit_open", "the circuit breaker stopped the study")
                    break
                if decision == "cooldown" and position < len(todo):
                    self._sleep(self.options.circuit_breaker_cooldown_s)
                    breaker.probe()
        except KeyboardInterrupt:
            self._mark_stopped(current)
            raise Interrupted(
                f"interrupted; completed results are kept in {self.study_dir} (--resume continues)"
            ) from None
        except OSError as exc:  # the results directory itself failed: full, read-only, gone
            self._mark_stopped(current)
            raise EnvironmentProblem(f"results directory {self.study_dir}: {exc.strerror or exc}") from None
        except LlemError:
            # The environment broke mid-study (daemon gone, device held): stop, truthfully.
            self._mark_stopped(current)
            raise
        finally:
            if self._study_lock is not None:
                self._study_lock.release()
        if final is None:
            final = "completed" if all(e.status == "completed" for e in store.manifest.runs) else "failed"
        store.set_status(final)
        self._summarise()
        return [self._outcome(run) for run in self.plan.runs]

    def _summarise(self) -> None:
        """Statistics across cycles of what has completed so far (best effort: results are safe)."""
        assert self.study_dir is not None
        with contextlib.suppress(LlemError, OSError, ValueError):
            self.summary = summarise(self.study_dir, self.options.factors)

    def _mark_stopped(self, current: PlannedRun | None) -> None:
        """Best effort: record that the study stopped early (the disk may be what failed)."""
        assert self._store is not None
        with contextlib.suppress(LlemError):
            if current is not None:
                self._store.update_run(current.run_id, status="interrupted", finished_at=utc_now())
            self._store.set_status("interrupted")
        self._summarise()

    def _skip(self, runs: list[PlannedRun], kind: str, message: str) -> None:
        assert self._store is not None
        for run in runs:
            self._store.update_run(run.run_id, status="skipped", failure=RunFailure(kind=kind, message=message))

    def _outcome(self, run: PlannedRun) -> RunOutcome:
        assert self._store is not None and self.study_dir is not None
        entry = self._store.manifest.run(run.run_id)
        result = None
        if entry.status == "completed":  # damaged since: no result here, and the next --resume runs it again
            result = read_result(self.study_dir / "runs" / run.run_id, run.run_id)[0]
        return RunOutcome(run=run, entry=entry, result=result)

    @staticmethod
    @contextlib.contextmanager
    def _token_file(wanted: bool) -> Iterator[Path | None]:
        """HF_TOKEN as a file only the agent may read (mounted read-only), removed on exit; None
        when the run cannot download or there is no token."""
        token = os.environ.get(SECRET_ENV)
        if not wanted or not token:
            yield None
            return
        folder = Path(tempfile.mkdtemp(prefix="llem-secret-"))
        try:
            path = folder / "hf_token"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token)
            if os.getuid() == 0:  # the unprivileged agent reads it through the root group
                os.chmod(folder, 0o750)
                os.chmod(path, 0o640)
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def completed_count(self) -> int:
        """Runs of this study already completed (a resumed study starts from these)."""
        return sum(1 for e in self._store.manifest.runs if e.status == "completed") if self._store else 0

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.events.pausing(seconds)
            time.sleep(seconds)

    def _download_dir(self, model: str, model_dir: Path | None) -> Path | None:
        """Where a hub model lands in the Hugging Face cache (None for a local model)."""
        if model_dir is not None or "/" not in model:
            return None
        return self.options.hf_home / "hub" / ("models--" + model.replace("/", "--"))

    def _run_one(self, run: PlannedRun, remaining_s: float | None) -> RunOutcome:
        assert self._store is not None and self.study_dir is not None
        config: ExperimentConfig = run.experiment.config
        run_dir = self.study_dir / "runs" / run.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        attempt = self._store.manifest.run(run.run_id).attempts + 1
        _archive_attempt(run_dir, attempt - 1)
        if os.getuid() == 0:
            os.chmod(run_dir, 0o2775)  # the unprivileged agent writes here through the root group
        gpus = assign_devices(config, list(self.options.gpu_indices))
        uuids = tuple(self.options.gpu_uuids[g] for g in gpus if g in self.options.gpu_uuids)
        model_dir = self._model_dirs.get(run.experiment.index)
        adapter_dir = self._adapter_dirs.get(run.experiment.index)
        # The token file lives exactly as long as this run: removed however the run ends (a lock
        # refused, Ctrl-C while queued, a failed start).
        with self._token_file(may_download(config, model_dir, adapter_dir)) as secret:
            engine_cache = self.options.engine_cache if config.engine == "tensorrt" else None
            launcher = self.launcher_for(config.engine)
            spec = build_spec(
                image=image_for(config.engine, self.options.images),
                study_id=self.study_dir.name,
                run_id=run.run_id,
                run_dir=run_dir.resolve(),
                hf_home=self.options.hf_home,
                model_dir=model_dir,
                gpu_indices=gpus,
                host_uid=os.getuid(),
                host_gid=os.getgid(),
                host_pid=os.getpid(),
                memory_limit=self.options.container_memory,
                baseline_cache=self.options.baseline_cache,
                adapter_dir=adapter_dir,
                engine_cache=engine_cache,
                engine=config.engine,
                gpu_uuids=uuids,
                prebuilt_engine=self._engine_dirs.get(run.experiment.index),
                dataset_file=self._datasets.get(run.experiment.index),
                token_file=secret,
                pids_limit=self.options.pids_limit,
            )

            def seen(target: str) -> str | None:  # where the agent sees a mount: in its container, or on the host
                mount = spec.mount_at(target)
                return launcher.agent_path(mount) if mount is not None else None

            request = RunRequest(
                run_id=run.run_id,
                study_name=self.plan.study.name,
                cycle=run.cycle,
                config_hash=run.experiment.config_hash,
                config=config,
                model_path=seen(CONTAINER_MODEL_DIR),
                adapter_path=seen(CONTAINER_ADAPTER_DIR),
                engine_cache_dir=seen(CONTAINER_ENGINE_CACHE),
                engine_path=seen(CONTAINER_TRT_ENGINE_DIR),
                dataset_path=seen(dataset_target(dataset))
                if (dataset := self._datasets.get(run.experiment.index))
                else None,
                gpus=[str(g) for g in gpus],
                gpu_uuids=list(uuids) if len(uuids) == len(gpus) else None,
                baseline_cache_dir=seen(CONTAINER_BASELINE_DIR),
                sample_interval_s=self.options.sample_interval_s,
                runner="local" if launcher.kind == "local" else "docker",
            )
            write_atomic(run_dir / EXPERIMENT_FILE, request.model_dump_json(indent=2))
            lock_dir = self.options.lock_dir
            locks = DeviceLocks(lock_names(gpus) if lock_dir else [], lock_dir or Path("."))
            if not locks.acquire(self.options.lock_wait_s, on_wait=self.events.waiting_for_devices):
                raise EnvironmentProblem(
                    f"devices {locks.names} are locked by another study (lock files in {lock_dir}); "
                    "wait for it, or run without --no-wait to queue behind it"
                )
            with locks:
                self._store.update_run(
                    run.run_id,
                    status="running",
                    started_at=utc_now(),
                    finished_at=None,
                    failure=None,
                    attempts=attempt,
                    devices=[f"gpu{g}" for g in gpus] or ["cpu"],
                )
                timeout = (
                    self.options.run_timeout_s if remaining_s is None else min(self.options.run_timeout_s, remaining_s)
                )
                watch = PhaseWatch(
                    run, run_dir / HEARTBEAT_FILE, self._download_dir(config.model, model_dir), self.events
                )
                liveness = Liveness(run_dir / HEARTBEAT_FILE, self.options.stall_timeout_s, on_poll=watch.poll)
                outcome = launcher.run(spec, max(timeout, 1.0), run_dir / CONTAINER_LOG, liveness)
        result, failure = collect(run_dir, run.run_id, outcome)
        entry = self._store.update_run(
            run.run_id,
            status="completed" if result is not None else "failed",
            finished_at=utc_now(),
            wall_s=round(outcome.duration_s, 3),
            exit_code=outcome.exit_code,
            failure=failure,
        )
        return RunOutcome(run=run, entry=entry, result=result)
