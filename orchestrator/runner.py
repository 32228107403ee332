"""Run a plan: for each run take its device locks, launch one container, collect its result."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock, Timeout

from llem_agent.contract import (
    refusal_reason,
    unsupported_by_agent,
    write_atomic,
)
from orchestrator import __version__
from orchestrator.claims import DEFAULT_STALE_AFTER_S, Claim, ClaimBoard
from orchestrator.datasets import resolve_dataset
from orchestrator.devices import assign_devices
from orchestrator.errors import ConfigError, EnvironmentProblem, Interrupted, LlemError
from orchestrator.hostinfo import host_facts
from orchestrator.launcher import Launcher
from orchestrator.locks import DeviceLocks, lock_names
from orchestrator.manifest import (
    CLAIMABLE,
    MANIFEST_FILE,
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
from orchestrator.onerun import RunOutcome, image_for, read_result, run_one
from orchestrator.plan import Plan, PlannedRun
from orchestrator.policy import CircuitBreaker, WallClock
from orchestrator.results import EXPERIMENTS_FILE, HOST_FILE, StudySummary, summarise, write_design
from orchestrator.userconfig import MeasurementFactors

LABEL_EXTRAS = "io.llem.agent-extras"  # the agent extras an image was built with (Dockerfiles)
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
    cpuset: tuple[int, ...] = ()  # CPU cores this process's CPU runs are pinned to (a parallel slot)
    claim_stale_s: float = DEFAULT_STALE_AFTER_S  # a worker's claim not refreshed for this long is a dead worker's


class RunnerEvents(Protocol):
    """Progress callbacks; the rich display implements them, tests may record them."""

    def run_started(self, run: PlannedRun, position: int, total: int) -> None: ...

    def run_finished(self, outcome: RunOutcome) -> None: ...

    def waiting_for_devices(self, names: list[str]) -> None: ...

    def pausing(self, seconds: float) -> None: ...

    def run_phase(self, run: PlannedRun, phase: str, detail: str) -> None: ...


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

    def preflight(self, here: bool = True) -> None:
        """Everything that can fail before a results directory exists: settings, models, images, Docker.

        ``here=False`` (a study other hosts will run: Slurm, Kubernetes): the settings and the
        model and prompt files only; each worker checks its own devices and images.
        """
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
            if here:
                assign_devices(exp.config, list(self.options.gpu_indices))  # raises when too few GPUs
        hub_models = sorted({e.config.model for e in self.plan.study.experiments if self._model_dirs[e.index] is None})
        if hub_models:  # downloads land in the mounted cache, written by the agent's uid
            check_hf_cache_writable(self.options.hf_home, os.getuid(), hub_models[0])
        if not here:
            return
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
                for n in lock_names(assign_devices(e.config, list(self.options.gpu_indices)), self.options.cpuset)
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

    def attach(self, study_dir: Path) -> None:
        """Join a study other workers may be running (``llem worker``): no lock, no status change."""
        try:
            manifest = ManifestStore.load(study_dir)
        except (OSError, ValueError, UnicodeDecodeError):
            raise ConfigError(f"{study_dir}: no readable {MANIFEST_FILE}; not a llem study directory") from None
        self._store = ManifestStore(study_dir, manifest)
        self.study_dir = study_dir

    def release(self) -> None:
        """Let go of the study directory without running it (its runs go to other workers)."""
        if self._study_lock is not None:
            self._study_lock.release()
            self._study_lock = None

    def prepare(self, describe: bool = True) -> Path:
        """Create the study directory with a copy of the study file and an all-pending manifest
        (``describe=False``: host.json without this host's launchers, for runs elsewhere)."""
        study = self.plan.study
        study_dir = _new_study_dir(self.options.results_root, study.name)
        try:
            shutil.copyfile(study.path, study_dir / STUDY_COPY)
            server, images = self._describe(self._images_by_engine()) if describe else ({}, {})
            facts = host_facts(server, images) | {"measurement": self.options.factors.as_dict()}
            write_atomic(study_dir / HOST_FILE, json.dumps(facts, indent=2))
            self._write_design(study_dir)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot write into {study_dir}: {exc.strerror or exc}") from None
        manifest = Manifest(
            study_name=study.name,
            study_id=study_dir.name,
            study_design_hash=study.design_hash,
            study_file=str(study.path.resolve()),
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
        for entry in manifest.runs:  # everything not completed runs again (its failure stays on record)
            if entry.status in ("failed", "skipped"):
                entry.status = "pending"
        manifest.study_file = str(self.plan.study.path.resolve())  # where this study's workers read it
        known = {entry.run_id for entry in manifest.runs}
        manifest.runs.extend(self._entry(run) for run in self.plan.runs if run.run_id not in known)
        manifest.n_cycles = max(manifest.n_cycles, self.plan.n_cycles)
        if not (study_dir / EXPERIMENTS_FILE).exists():
            self._write_design(study_dir)
        return self._open(study_dir, manifest)

    def execute(self, worker: str | None = None) -> list[RunOutcome]:
        """Run every run that is pending (or was interrupted) under the study's policies, each
        under a claim (:mod:`orchestrator.claims`), so that other workers may share the study.

        ``worker``: run as one worker of several (``llem worker``: Slurm array tasks, Kubernetes
        pods): runs a live worker holds are left to it, and the study's final status is set by
        the worker that finds nothing left. Ctrl-C / SIGTERM marks the current run interrupted
        (claimable again) and raises. Returns an outcome for every run of the plan.
        """
        assert self._store is not None and self.study_dir is not None, "call prepare() or resume() first"
        store = self._store
        board = ClaimBoard(self.study_dir, worker, self.options.claim_stale_s)
        todo = [run for run in self.plan.runs if store.manifest.run(run.run_id).status in CLAIMABLE]
        execution = self.plan.study.execution
        breaker = CircuitBreaker(self.options.max_consecutive_failures, self.options.circuit_breaker_cooldown_s)
        clock = WallClock(self.options.wall_clock_limit_s)
        final: StudyStatus | None = None
        current: PlannedRun | None = None
        claim: Claim | None = None
        previous: PlannedRun | None = None
        try:
            for position, run in enumerate(todo, start=1):
                if clock.expired():
                    final = "timed_out"
                    if worker is None:  # a worker leaves the rest to the others
                        self._skip(todo[position - 1 :], "timed_out", "the study's wall-clock limit was reached")
                    break
                claim = self._claim(board, run)
                if claim is None:
                    continue
                if previous is not None:
                    new_cycle = run.cycle != previous.cycle
                    self._sleep(execution.cycle_gap_seconds if new_cycle else execution.config_gap_seconds)
                current = previous = run
                self.events.run_started(run, position, len(todo))
                with board.keep_alive(claim):
                    outcome = self._run_one(run, clock.remaining_s(), claim.held)
                claim.release()
                current = claim = None
                self.events.run_finished(outcome)
                decision = breaker.record(outcome.entry.status == "completed")
                if decision == "abort":
                    final = "circuit_open"
                    if worker is None:
                        self._skip(todo[position:], "circuit_open", "the circuit breaker stopped the study")
                    break
                if decision == "cooldown" and position < len(todo):
                    self._sleep(self.options.circuit_breaker_cooldown_s)
                    breaker.probe()
        except (KeyboardInterrupt, OSError, LlemError) as exc:
            self._mark_stopped(current, study=worker is None)
            raise self._stopped_by(exc) from None
        finally:
            if claim is not None:
                claim.release()
            if self._study_lock is not None:
                self._study_lock.release()
        self._conclude(final, last_of_many=worker is not None)
        return [self._outcome(run) for run in self.plan.runs]

    def _stopped_by(self, exc: BaseException) -> LlemError:
        """The error a stopped study ends with: Ctrl-C / SIGTERM, the results directory failing
        (full, read-only, gone), or the environment breaking mid-study (daemon gone, device held)."""
        if isinstance(exc, KeyboardInterrupt):
            return Interrupted(f"interrupted; completed results are kept in {self.study_dir} (--resume continues)")
        if isinstance(exc, OSError):
            return EnvironmentProblem(f"results directory {self.study_dir}: {exc.strerror or exc}")
        assert isinstance(exc, LlemError)
        return exc

    def _claim(self, board: ClaimBoard, run: PlannedRun) -> Claim | None:
        """A claim on ``run``; None when a live worker holds it or has finished it since."""
        assert self._store is not None
        claim = board.claim(run.run_id)
        if claim is not None and self._store.refresh().run(run.run_id).status not in CLAIMABLE:
            claim.release()
            return None
        return claim

    def _conclude(self, final: StudyStatus | None, last_of_many: bool) -> None:
        """Set the study's final status (a worker: only when no run is left to any worker)."""
        assert self._store is not None
        runs = self._store.refresh().runs
        if last_of_many and final is None and any(e.status in CLAIMABLE for e in runs):
            return  # other workers are still at it
        if final is None:
            final = "completed" if all(e.status == "completed" for e in runs) else "failed"
        self._store.set_status(final)
        self._summarise()

    def _summarise(self) -> None:
        """Statistics across cycles of what has completed so far (best effort: results are safe)."""
        assert self.study_dir is not None
        with contextlib.suppress(LlemError, OSError, ValueError):
            self.summary = summarise(self.study_dir, self.options.factors)

    def _mark_stopped(self, current: PlannedRun | None, study: bool = True) -> None:
        """Best effort: record that the run (and with ``study`` the study) stopped early (the
        disk may be what failed). An interrupted run is claimable again."""
        assert self._store is not None
        with contextlib.suppress(LlemError):
            if current is not None:
                self._store.update_run(current.run_id, status="interrupted", finished_at=utc_now())
            if study:
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

    def completed_count(self) -> int:
        """Runs of this study already completed (a resumed study starts from these)."""
        return sum(1 for e in self._store.manifest.runs if e.status == "completed") if self._store else 0

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.events.pausing(seconds)
            time.sleep(seconds)

    def _run_one(
        self, run: PlannedRun, remaining_s: float | None, still_ours: Callable[[], bool] = lambda: True
    ) -> RunOutcome:
        return run_one(self, run, remaining_s, still_ours)
