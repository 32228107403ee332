"""The Python API: ``import llem``.

``run_study`` runs a study (a YAML file, or its content as a mapping) in this process, one run
at a time, exactly as ``llem run`` does; ``run_experiment`` runs one experiment once and returns
its result; ``load_study`` reads back a study directory, finished or not. Options are one frozen
:class:`~.options.Options`; progress goes to an events object (any of the methods of
:class:`Events`, all optional; the command line's progress bar is one); errors are llem's own
exceptions (:class:`~.errors.ConfigError`, :class:`~.errors.EnvironmentProblem`,
:class:`~.errors.Interrupted`, :class:`~.errors.RunFailed`, all :class:`~.errors.LlemError`).
Nothing here prints, and nothing is written outside the results directory.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from llem_agent.contract import ExperimentConfig, ExperimentResult

from .errors import ConfigError, RunFailed
from .execution import HostSettings, RunOutcome
from .manifest import Manifest, StudyStatus
from .options import Options
from .plan import Plan, PlannedRun
from .results import RunRecord, StudySummary, aggregate, run_rows
from .study import Study, study_from_data
from .study import load_study as load_study_file
from .studydir import StudyDir
from .userconfig import UserConfig, load_user_config

StudySource = str | Path | Mapping[str, Any] | ExperimentConfig
Prepared = tuple[UserConfig, HostSettings]  # the user config, and the runner options resolved from it


class Events(Protocol):
    """What a run of a study reports as it goes. An events object may have any of these methods
    (the others are not called): ``llem run``'s progress bar has them all."""

    def study_started(self, plan: Plan, study_dir: Path, completed: int, resumed: bool) -> None:
        """The study directory is ready; ``completed`` runs of ``plan`` are already done (a resume)."""

    def run_started(self, run: PlannedRun, position: int, total: int) -> None: ...

    def run_phase(self, run: PlannedRun, phase: str, detail: str) -> None: ...

    def run_finished(self, outcome: RunOutcome) -> None: ...

    def waiting_for_devices(self, names: list[str]) -> None: ...

    def pausing(self, seconds: float) -> None: ...

    def pulling(self, image: str, done_bytes: int, total_bytes: int) -> None:
        """An image this host lacks is being pulled (``Options.pull``)."""

    def note(self, text: str) -> None:
        """A line worth telling the user (a skipped grid point, a local runner, an orphan removed)."""


class _Forward:
    """The runner's events, forwarded to whichever of them the caller's object has."""

    def __init__(self, target: object | None) -> None:
        self._target = target

    def _call(self, name: str, *args: Any) -> None:
        method = getattr(self._target, name, None)
        if callable(method):
            method(*args)

    def study_started(self, plan: Plan, study_dir: Path, completed: int, resumed: bool) -> None:
        self._call("study_started", plan, study_dir, completed, resumed)

    def run_started(self, run: PlannedRun, position: int, total: int) -> None:
        self._call("run_started", run, position, total)

    def run_phase(self, run: PlannedRun, phase: str, detail: str) -> None:
        self._call("run_phase", run, phase, detail)

    def run_finished(self, outcome: RunOutcome) -> None:
        self._call("run_finished", outcome)

    def waiting_for_devices(self, names: list[str]) -> None:
        self._call("waiting_for_devices", names)

    def pausing(self, seconds: float) -> None:
        self._call("pausing", seconds)

    def pulling(self, image: str, done_bytes: int, total_bytes: int) -> None:
        self._call("pulling", image, done_bytes, total_bytes)

    def note(self, text: str) -> None:
        self._call("note", text)


@dataclass(frozen=True)
class RunResult:
    """One run of a study: where it stands and, when it completed, its typed result."""

    run_id: str
    experiment: int  # 1-based, as llem results shows it
    cycle: int
    status: str
    failure: str | None  # "kind: message" of a run that did not complete
    wall_s: float | None
    result: ExperimentResult | None


@dataclass(frozen=True)
class StudyResults:
    """A study directory read back: its runs with their typed results, and the statistics across
    cycles that ``llem results`` shows (``summary``)."""

    directory: Path
    summary: StudySummary
    runs: tuple[RunResult, ...]

    @property
    def name(self) -> str:
        return self.manifest.study_name

    @property
    def status(self) -> StudyStatus:
        return self.manifest.status

    @property
    def manifest(self) -> Manifest:
        return self.summary.manifest

    @property
    def results(self) -> list[ExperimentResult]:
        """The typed result of every completed run, in plan order."""
        return [r.result for r in self.runs if r.result is not None]

    def table(self) -> list[dict[str, Any]]:
        """The runs as a table: one row per run with its swept parameters, status, flags and
        metrics (the rows of ``runs.csv``; ``pandas.DataFrame(study.table())`` makes a frame)."""
        return run_rows(self.summary)


def load_study(directory: str | Path) -> StudyResults:
    """Read a study directory (finished, interrupted or still running); nothing is written."""
    study_dir = Path(directory)
    return _read_back(study_dir, aggregate(study_dir, load_user_config().factors()))


def _read_back(study_dir: Path, summary: StudySummary) -> StudyResults:
    """The study with its statistics (``summary``) and each completed run's typed result."""
    return StudyResults(study_dir, summary, tuple(_run(StudyDir(study_dir), r) for r in summary.runs))


def _run(study: StudyDir, record: RunRecord) -> RunResult:
    result = study.run(record.run_id).read_result()[0] if record.status == "completed" else None
    failure = f"{record.failure_kind}: {record.failure_message}" if record.failure_kind else None
    return RunResult(
        run_id=record.run_id,
        experiment=record.experiment,
        cycle=record.cycle,
        status=record.status,
        failure=failure,
        wall_s=record.wall_s,
        result=result,
    )


@contextmanager
def _as_study(source: StudySource, options: Options) -> Iterator[Study]:
    """A study file, loaded; a mapping (or one ExperimentConfig) written to a file of its own
    for the study directory's copy, its relative paths anchored at the current directory."""
    if isinstance(source, str | Path):
        yield load_study_file(
            Path(source), name_override=options.name, max_experiments=options.max_experiments, profile=options.profile
        )
        return
    if isinstance(source, ExperimentConfig):
        data: dict[str, Any] = source.model_dump(mode="json", exclude_unset=True)
        data.setdefault("engine", source.engine)
        data.setdefault("model", source.model)
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        raise ConfigError(f"a study is a YAML file path, a mapping or an ExperimentConfig, not {type(source).__name__}")
    name = options.name or str(data.get("name") or ("experiment" if isinstance(source, ExperimentConfig) else "study"))
    with tempfile.TemporaryDirectory(prefix="llem-study-") as folder:
        path = Path(folder) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        anchor = Path.cwd() / path.name
        study = study_from_data(data, anchor, options.name, options.max_experiments, options.profile)
        yield dataclasses.replace(study, path=path, origin=anchor)


def run_study(study: StudySource, options: Options | None = None, events: object | None = None) -> StudyResults:
    """Run ``study`` in this process, one run at a time (each in its own container, or a local
    process with ``runner="local"``), and return it read back. ``options.resume`` /
    ``options.resume_dir`` continue an earlier one. Runs that fail do not raise: see each run's
    ``status``; a study that cannot run at all raises (ConfigError, EnvironmentProblem), and
    Ctrl-C raises Interrupted with every completed result kept."""
    options = options or Options()
    with _as_study(study, options) as loaded:
        return _run_study(loaded, options, _Forward(events))


def run_plan(
    study: Study, plan: Plan, options: Options, events: object | None = None, *, host: Prepared | None = None
) -> StudyResults:
    """``run_study`` of a study already loaded and planned (``llem run`` plans before it chooses
    who runs the study; this is the in-process path). ``host``: the user config and runner options
    the caller already resolved for this study and these options (not resolved again)."""
    return _run_study(study, options, _Forward(events), plan, host)


def _run_study(
    study: Study, options: Options, forward: _Forward, plan: Plan | None = None, prepared: Prepared | None = None
) -> StudyResults:
    from .session import host_settings, load_plan, make_runners, open_study, prepare_host
    from .studyloop import StudyLoop

    if plan is None:
        study, plan = load_plan(study, options)
    if prepared is None:
        user = load_user_config()
        prepared = (user, host_settings(options, study, user))
    user, host = prepared
    for skipped in study.skipped:
        forward.note(f"skipping {skipped.describe()}")
    for warning in study.warnings:
        forward.note(f"warning: {warning}")
    engines, docker = make_runners(study, options, user, on_pull=forward.pulling)
    loop = StudyLoop(plan, host, engines, events=forward)
    prepare_host(loop, engines, docker, forward.note)
    study_dir = open_study(options, loop)
    forward.study_started(plan, study_dir, loop.completed_count(), bool(options.resume or options.resume_dir))
    loop.execute()
    # The runner summarised the study as it concluded (and wrote the summary files): read that,
    # not every result.json again; only where that failed is the directory aggregated here.
    return _read_back(study_dir, loop.summary or aggregate(study_dir, host.factors))


def run_experiment(
    config: StudySource, options: Options | None = None, events: object | None = None
) -> ExperimentResult:
    """Run one experiment once (one cycle) and return its result; raises RunFailed when its run
    did not complete. ``config``: an ExperimentConfig, its fields as a mapping, or a YAML file."""
    options = dataclasses.replace(options or Options(), cycles=1)
    with _as_study(config, options) as study:
        if len(study.experiments) != 1:
            raise ConfigError(f"run_experiment runs one experiment; this study has {len(study.experiments)}")
        done = _run_study(study, options, _Forward(events))
    if len(done.runs) != 1:
        raise ConfigError(f"run_experiment runs one experiment; {done.directory} has {len(done.runs)} runs")
    (run,) = done.runs
    if run.result is None:
        raise RunFailed(f"{run.run_id} {run.status}: {run.failure or 'no result'} (see {done.directory})")
    return run.result
