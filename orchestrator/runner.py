"""Run a plan: for each run take its device locks, launch one container, collect its result."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from llem_agent.contract import (
    CONTAINER_MODEL_DIR,
    ERROR_FILE,
    EXPERIMENT_FILE,
    RESULT_FILE,
    ExperimentConfig,
    ExperimentResult,
    RunError,
    RunRequest,
    unsupported_by_agent,
    write_atomic,
)
from orchestrator import __version__
from orchestrator.container import build_spec
from orchestrator.devices import assign_devices
from orchestrator.errors import ConfigError, EnvironmentProblem, Interrupted
from orchestrator.launcher import ContainerOutcome, Launcher
from orchestrator.locks import DeviceLocks, lock_names
from orchestrator.manifest import Manifest, ManifestStore, RunEntry, RunFailure, SkippedEntry, utc_now
from orchestrator.models import resolve_model_dir
from orchestrator.plan import Plan, PlannedRun

CONTAINER_LOG = "container.log"
STUDY_COPY = "study.yaml"


@dataclass(frozen=True)
class RunnerOptions:
    """Host settings of one invocation (CLI flags, environment), not part of the study."""

    results_root: Path
    images: dict[str, str]
    run_timeout_s: float
    gpu_indices: tuple[int, ...]
    lock_dir: Path
    lock_wait_s: float | None
    hf_home: Path


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


def image_for(engine: str, images: dict[str, str]) -> str:
    try:
        return images[engine]
    except KeyError:
        raise EnvironmentProblem(f"no image configured for engine '{engine}' (have: {sorted(images)})") from None


def _new_study_dir(root: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 100):
        path = root / (f"{name}_{stamp}" if attempt == 1 else f"{name}_{stamp}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise EnvironmentProblem(f"cannot create a new study directory under {root}")


def collect(run_dir: Path, run_id: str, outcome: ContainerOutcome) -> tuple[ExperimentResult | None, RunFailure | None]:
    """Read what the agent left in ``run_dir`` and decide how the run ended."""
    result_path, error_path = run_dir / RESULT_FILE, run_dir / ERROR_FILE
    if outcome.timed_out:
        return None, RunFailure(kind="timeout", message=f"no exit within the run timeout ({outcome.duration_s:.0f} s)")
    if outcome.oom_killed:
        return None, RunFailure(kind="oom", message="the container was killed for exceeding its memory limit")
    if result_path.exists() and outcome.exit_code == 0:
        try:
            result = ExperimentResult.model_validate_json(result_path.read_text(encoding="utf-8"))
        except (ValidationError, ValueError) as exc:
            return None, RunFailure(kind="corrupt_result", message=f"{RESULT_FILE} is not a valid result: {exc}")
        if result.run_id != run_id:
            return None, RunFailure(kind="corrupt_result", message=f"{RESULT_FILE} belongs to run {result.run_id}")
        return result, None
    if error_path.exists():
        try:
            error = RunError.model_validate_json(error_path.read_text(encoding="utf-8"))
            return None, RunFailure(kind="agent_error", type=error.type, message=f"{error.phase}: {error.message}")
        except (ValidationError, ValueError):
            pass
    return None, RunFailure(kind="no_result", message=f"container exited {outcome.exit_code} without {RESULT_FILE}")


class StudyRunner:
    """Executes a plan through a launcher and keeps the manifest true at every step."""

    def __init__(self, plan: Plan, options: RunnerOptions, launcher: Launcher, events: RunnerEvents) -> None:
        self.plan = plan
        self.options = options
        self.launcher = launcher
        self.events = events
        self.study_dir: Path | None = None
        self._store: ManifestStore | None = None
        self._model_dirs: dict[int, Path | None] = {}

    def preflight(self) -> None:
        """Everything that can fail before a results directory exists: settings, models, images, Docker."""
        base = self.plan.study.path.parent
        for exp in self.plan.study.experiments:
            refused = unsupported_by_agent(exp.config, exp.config.engine)
            if refused == ["engine"]:
                raise ConfigError(f"engine '{exp.config.engine}' has no agent in llem {__version__} yet")
            if refused:
                raise ConfigError(
                    f"experiment {exp.index + 1}: the {exp.config.engine} agent of llem {__version__} does not "
                    f"apply {', '.join(refused)} yet; remove it rather than get results that ignore it"
                )
            self._model_dirs[exp.index] = resolve_model_dir(exp.config.model, base)
            assign_devices(exp.config, list(self.options.gpu_indices))  # raises when too few GPUs
        self.launcher.check({image_for(e.config.engine, self.options.images) for e in self.plan.study.experiments})

    def prepare(self) -> Path:
        """Create the study directory with a copy of the study file and an all-pending manifest."""
        study = self.plan.study
        study_dir = _new_study_dir(self.options.results_root, study.name)
        shutil.copyfile(study.path, study_dir / STUDY_COPY)
        manifest = Manifest(
            study_name=study.name,
            study_id=study_dir.name,
            study_design_hash=study.design_hash,
            llem_version=__version__,
            n_cycles=self.plan.n_cycles,
            experiment_order=self.plan.order,
            shuffle_seed=self.plan.seed,
            runs=[
                RunEntry(
                    run_id=run.run_id,
                    experiment_index=run.experiment.index,
                    cycle=run.cycle,
                    config_hash=run.experiment.config_hash,
                    image=image_for(run.experiment.config.engine, self.options.images),
                )
                for run in self.plan.runs
            ],
            skipped=[SkippedEntry(index=s.index, reason=s.reason) for s in study.skipped],
        )
        self._store = ManifestStore(study_dir, manifest)
        self._store.save()
        self.study_dir = study_dir
        return study_dir

    def execute(self) -> list[RunOutcome]:
        """Run every planned run in order. Ctrl-C marks the current run interrupted and raises."""
        assert self._store is not None and self.study_dir is not None, "call prepare() first"
        outcomes: list[RunOutcome] = []
        current: PlannedRun | None = None
        execution = self.plan.study.execution
        try:
            for position, run in enumerate(self.plan.runs, start=1):
                if position > 1:
                    new_cycle = run.cycle != self.plan.runs[position - 2].cycle
                    self._sleep(execution.cycle_gap_seconds if new_cycle else execution.config_gap_seconds)
                current = run
                self.events.run_started(run, position, len(self.plan.runs))
                outcome = self._run_one(run)
                outcomes.append(outcome)
                self.events.run_finished(outcome)
            current = None
        except KeyboardInterrupt:
            if current is not None:
                self._store.update_run(current.run_id, status="interrupted", finished_at=utc_now())
            self._store.set_status("interrupted")
            raise Interrupted(f"interrupted; completed results are kept in {self.study_dir}") from None
        failed = any(o.entry.status != "completed" for o in outcomes)
        self._store.set_status("failed" if failed else "completed")
        return outcomes

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.events.pausing(seconds)
            time.sleep(seconds)

    def _run_one(self, run: PlannedRun) -> RunOutcome:
        assert self._store is not None and self.study_dir is not None
        config: ExperimentConfig = run.experiment.config
        run_dir = self.study_dir / "runs" / run.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        model_dir = self._model_dirs.get(run.experiment.index)
        request = RunRequest(
            run_id=run.run_id,
            study_name=self.plan.study.name,
            cycle=run.cycle,
            config_hash=run.experiment.config_hash,
            config=config,
            model_path=CONTAINER_MODEL_DIR if model_dir is not None else None,
        )
        write_atomic(run_dir / EXPERIMENT_FILE, request.model_dump_json(indent=2))
        gpus = assign_devices(config, list(self.options.gpu_indices))
        image = image_for(config.engine, self.options.images)
        spec = build_spec(
            image=image,
            study_id=self.study_dir.name,
            run_id=run.run_id,
            run_dir=run_dir.resolve(),
            hf_home=self.options.hf_home,
            model_dir=model_dir,
            gpu_indices=gpus,
            user=f"{os.getuid()}:{os.getgid()}",
            host_pid=os.getpid(),
        )
        locks = DeviceLocks(lock_names(gpus), self.options.lock_dir)
        if not locks.acquire(self.options.lock_wait_s, on_wait=self.events.waiting_for_devices):
            raise EnvironmentProblem(f"devices {locks.names} stayed locked by another study")
        with locks:
            self._store.update_run(
                run.run_id, status="running", started_at=utc_now(), devices=[f"gpu{g}" for g in gpus] or ["cpu"]
            )
            outcome = self.launcher.run(spec, self.options.run_timeout_s, run_dir / CONTAINER_LOG)
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
