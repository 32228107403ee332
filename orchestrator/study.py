"""Load a study (or single-experiment) YAML into validated experiments plus skipped points."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llem_agent.contract import ENGINES, ExperimentConfig, canonical_engine, canonical_json, config_hash
from orchestrator import yamlsafe
from orchestrator.errors import ConfigError
from orchestrator.runners import RunnerKind, parse_runner
from orchestrator.sweep import count_configs, deep_merge, expand
from orchestrator.validation import describe, did_you_mean, has_unknown_key

STUDY_KEYS = ("name", "base", "sweep", "experiments", "study_execution", "runners")
ExperimentOrder = Literal["sequential", "interleave", "shuffle", "reverse", "latin_square"]
DEFAULT_CYCLES = 3
DEFAULT_ORDER: ExperimentOrder = "shuffle"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class StudyExecution(BaseModel):
    """How to run the collection (003 ``study_execution:``); excluded from the design hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_cycles: int | None = Field(default=None, ge=1, description=f"None: {DEFAULT_CYCLES} (CLI default).")
    experiment_order: ExperimentOrder | None = Field(default=None, description=f"None: {DEFAULT_ORDER}.")
    shuffle_seed: int | None = Field(default=None, description="None: derived from the study design hash.")
    config_gap_seconds: float = Field(default=0.0, ge=0.0, description="Pause between runs (thermal recovery).")
    cycle_gap_seconds: float = Field(default=0.0, ge=0.0, description="Pause between cycles (thermal reset).")
    max_consecutive_failures: int = Field(default=10, ge=0, description="Circuit breaker: 0 off, 1 fail fast.")
    circuit_breaker_cooldown_seconds: float = Field(default=60.0, ge=0.0)
    wall_clock_timeout_hours: float | None = Field(default=None, gt=0.0, description="None: no limit.")
    max_parallel_runs: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        default=None,
        description="Runs at once on this host, each on its own devices (GPUs; on CPU, cores). None: 1, since "
        "energy runs own their devices; auto: as many as the GPUs allow. --parallel overrides it.",
    )


def _validate_runners(value: Any, path: Path) -> tuple[dict[str, str], dict[str, RunnerKind]]:
    """``runners:`` maps an engine to ``docker``, ``docker:<image>`` or ``local``: (images, runners)."""
    if value is None:
        return {}, {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: runners: expected a mapping of engine to runner, got {type(value).__name__}")
    images: dict[str, str] = {}
    runners: dict[str, RunnerKind] = {}
    for engine, runner in value.items():
        name = canonical_engine(str(engine))
        if name not in ENGINES:
            raise ConfigError(f"{path}: runners: unknown engine '{engine}'{did_you_mean(str(engine), ENGINES)}")
        kind, image = parse_runner(runner, f"{path}: runners.{engine}")
        runners[name] = kind
        if image is not None:
            images[name] = image
    return images, runners


@dataclass(frozen=True)
class Experiment:
    """One valid experiment of a study, in design order."""

    index: int
    config: ExperimentConfig
    config_hash: str


@dataclass(frozen=True)
class Skipped:
    """A grid point that failed validation; it never reaches a GPU (002)."""

    index: int
    raw: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Study:
    """A parsed study: what to measure and how to schedule it."""

    name: str
    path: Path
    experiments: tuple[Experiment, ...]
    skipped: tuple[Skipped, ...]
    execution: StudyExecution
    design_hash: str
    images: dict[str, str] = field(default_factory=dict)
    runners: dict[str, RunnerKind] = field(default_factory=dict)  # engine -> docker | local (runners:)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"study file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"study file is a directory: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        return yamlsafe.load(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None


def _load_mapping(path: Path) -> dict[str, Any]:
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


MAX_EXPERIMENTS = 100_000  # llem run --max-experiments; planning 100,000 takes seconds
MAX_RUNS = 1_000_000  # llem run --max-runs: experiments x cycles


def design_hash(experiments: tuple[Experiment, ...]) -> str:
    """16 hex chars identifying the parameter space: the ordered experiment config hashes."""
    return hashlib.sha256(canonical_json([e.config_hash for e in experiments]).encode()).hexdigest()[:16]


def _validate(index: int, raw: dict[str, Any], origin: Path) -> Experiment | Skipped:
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        if has_unknown_key(exc):
            # A typo is a mistake in the file, not an invalid grid point: stop here.
            raise ConfigError(f"{origin}: {describe(exc, ExperimentConfig, STUDY_KEYS)}") from None
        return Skipped(index=index, raw=raw, reason=describe(exc, ExperimentConfig))
    return Experiment(index=index, config=config, config_hash=config_hash(config))


def load_study(path: Path, name_override: str | None = None, max_experiments: int = MAX_EXPERIMENTS) -> Study:
    """Parse ``path``: a study when it has ``sweep:`` or ``experiments:``, else one experiment."""
    path = Path(path)
    return study_from_data(_load_mapping(path), path, name_override, max_experiments)


def _deduplicate(results: list[Experiment | Skipped]) -> list[Experiment | Skipped]:
    """Identical configs (same hash) run once; later copies are reported as skipped."""
    seen: dict[str, int] = {}
    out: list[Experiment | Skipped] = []
    for item in results:
        if isinstance(item, Experiment):
            if item.config_hash in seen:
                raw = item.config.model_dump(mode="json", exclude_none=True)
                out.append(Skipped(item.index, raw, f"duplicate of grid point {seen[item.config_hash] + 1}"))
                continue
            seen[item.config_hash] = item.index
        out.append(item)
    return out


def study_from_data(
    data: dict[str, Any], path: Path, name_override: str | None = None, max_experiments: int = MAX_EXPERIMENTS
) -> Study:
    """Build a Study from an already-loaded mapping; ``path`` anchors relative paths and names."""
    base_ref = data.get("base")
    shared = {k: v for k, v in data.items() if k not in STUDY_KEYS}
    if base_ref is not None:
        if not isinstance(base_ref, str) or "\x00" in base_ref:
            raise ConfigError(f"{path}: base: expected a file path, got {base_ref!r}")
        base_path = (path.parent / base_ref).resolve()
        base = {k: v for k, v in _load_mapping(base_path).items() if k not in STUDY_KEYS}
        shared = deep_merge(base, shared)
    sweep, explicit = data.get("sweep"), data.get("experiments")
    if sweep is not None and not isinstance(sweep, dict):
        raise ConfigError(f"{path}: sweep: expected a mapping of axes, got {type(sweep).__name__}")
    if explicit is not None and not isinstance(explicit, list):
        raise ConfigError(f"{path}: experiments: expected a list, got {type(explicit).__name__}")
    execution_data = data.get("study_execution") or {}
    if not isinstance(execution_data, dict):
        raise ConfigError(f"{path}: study_execution: expected a mapping, got {type(execution_data).__name__}")
    try:
        execution = StudyExecution.model_validate(execution_data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: study_execution: {describe(exc, StudyExecution)}") from None
    images, runners = _validate_runners(data.get("runners"), path)

    size = count_configs(shared, sweep, explicit)
    if size > max_experiments:
        raise ConfigError(
            f"{path}: the study expands to {size:,} experiments, more than the limit of {max_experiments:,} "
            "(--max-experiments raises it if you mean it)"
        )
    raws = expand(shared, sweep, explicit) if (sweep or explicit) else expand(shared, None, None) or [shared]
    results = _deduplicate([_validate(i, raw, path) for i, raw in enumerate(raws)])
    experiments = tuple(r for r in results if isinstance(r, Experiment))
    skipped = tuple(r for r in results if isinstance(r, Skipped))
    if not experiments:
        first = skipped[0].reason if skipped else "the file defines no experiment"
        raise ConfigError(f"{path}: no valid experiment remains ({len(skipped)} skipped; first: {first})")
    # Renumber so experiment indices are dense in design order.
    experiments = tuple(Experiment(i, e.config, e.config_hash) for i, e in enumerate(experiments))

    name = name_override if name_override is not None else (data.get("name") or path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{path}: name {name!r} must be 1-100 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return Study(
        name=name,
        path=path,
        experiments=experiments,
        skipped=skipped,
        execution=execution,
        design_hash=design_hash(experiments),
        images=images,
        runners=runners,
    )
