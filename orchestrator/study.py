"""Load a study (or single-experiment) YAML into validated experiments plus skipped points."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from llem_agent.contract import ENGINES, ExperimentConfig, canonical_engine, canonical_json, config_hash

from . import yamlsafe
from .errors import ConfigError
from .profiles import get_profile
from .runners import RunnerKind, parse_runner
from .studydir import StudyDir
from .sweep import count_configs, deep_merge, expand
from .validation import describe, did_you_mean, has_unknown_key, model_at

STUDY_KEYS = ("name", "base", "sweep", "experiments", "study_execution", "runners")
ExperimentOrder = Literal["sequential", "interleave", "shuffle", "reverse", "latin_square"]
DEFAULT_CYCLES = 3
DEFAULT_ORDER: ExperimentOrder = "shuffle"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


MAX_CYCLES = 1_000_000  # as many as --max-runs allows one experiment
MAX_GAP_SECONDS = 86_400.0  # a pause between runs or cycles, a breaker's cooldown: at most a day
MAX_WALL_CLOCK_HOURS = 8_760.0  # a year
MAX_PARALLEL_RUNS = 1024


class StudyExecution(BaseModel):
    """How to run the collection (003 ``study_execution:``); excluded from the design hash.

    Strict and finite as the experiment's sections are: no booleans or quoted strings as numbers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    n_cycles: int | None = Field(
        default=None, ge=1, le=MAX_CYCLES, description=f"1-1,000,000. None: {DEFAULT_CYCLES} (CLI default)."
    )
    experiment_order: ExperimentOrder | None = Field(default=None, description=f"None: {DEFAULT_ORDER}.")
    shuffle_seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="0 to 2^63 - 1. None: derived from the study design hash."
    )
    config_gap_seconds: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_GAP_SECONDS,
        description="Pause between runs (thermal recovery), 0-86,400 s. None: the machine's default (user config "
        "study_execution.config_gap_seconds, else 60 s) between GPU runs, 0 s between CPU runs.",
    )
    cycle_gap_seconds: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_GAP_SECONDS,
        description="Pause between cycles (thermal reset), 0-86,400 s. None: the machine's default (user config "
        "study_execution.cycle_gap_seconds, else 300 s) between GPU cycles, 0 s on CPU.",
    )
    max_consecutive_failures: int = Field(
        default=10, ge=0, le=MAX_CYCLES, description="Circuit breaker: 0 off, 1 fail fast."
    )
    circuit_breaker_cooldown_seconds: float = Field(default=60.0, ge=0.0, le=MAX_GAP_SECONDS, description="0-86,400 s.")
    wall_clock_timeout_hours: float | None = Field(
        default=None, gt=0.0, le=MAX_WALL_CLOCK_HOURS, description="At most 8,760 h (a year). None: no limit."
    )
    max_parallel_runs: Annotated[int, Field(ge=1, le=MAX_PARALLEL_RUNS)] | Literal["auto"] | None = Field(
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
    point: str = ""  # what makes it this grid point: its swept values ("engine=tensorrt, dtype=float32")

    def describe(self) -> str:
        """``grid point 3 (engine=tensorrt, dtype=float32): <reason>``."""
        return f"grid point {self.index + 1}{f' ({self.point})' if self.point else ''}: {self.reason}"


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
    # Where relative paths are anchored when that is not beside ``path``: a study the Python API
    # was given as a mapping, written to a file of its own, anchors them at the caller's directory.
    origin: Path | None = None
    profile: str | None = None  # --profile this study was loaded with (profiles.py)
    # output_dir (003): where its study directory goes, anchored at the study file; --results-dir wins.
    output_dir: Path | None = None
    warnings: tuple[str, ...] = ()  # said before it runs (dry run, llem run), never a refusal

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the study (models, prompt files, ``base:``) start from."""
        return (self.origin or self.path).parent

    @property
    def anchor(self) -> Path:
        """The file a study directory records as the study's origin (``manifest.study_file``)."""
        return (self.origin or self.path).resolve()


def _read_yaml(path: Path) -> Any:
    text = yamlsafe.read_text(path, "study file")  # a regular file of at most 16 MiB: never /dev/zero
    if text is None:
        raise ConfigError(f"study file not found: {path}")
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


# Errors that say the file is wrong whatever the grid point, as a typo does: a value of the wrong
# kind (true or a quoted "4" where a number goes, a float where an integer goes, .nan, a number
# where a section goes) or a key that is not a string.
_KIND_ERRORS = frozenset(
    {"int_type", "float_type", "finite_number", "bool_type", "string_type", "dict_type", "list_type", "model_type"}
    | {"model_attributes_type", "invalid_key"}
)
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _field(model: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[str, FieldInfo | None]:
    """The dotted path of the field an error points at (a union's member tags dropped) and its info."""
    last: tuple[int, FieldInfo] | None = None
    for i, part in enumerate(loc):
        parent = model_at(model, loc[:i])
        if parent is None or not isinstance(part, str) or part not in parent.model_fields:
            break
        last = (i, parent.model_fields[part])
    if last is None:
        return ".".join(str(p) for p in loc), None
    return ".".join(str(p) for p in loc[: last[0] + 1]), last[1]


def _number(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,g}" if isinstance(value, float) else str(value)


def _bounds(info: FieldInfo | None) -> str:
    """A field's documented range (``1 to 65,536``, ``> 0 and <= 1``); empty when it has none."""
    signs = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
    limits = {name: getattr(m, name) for m in (info.metadata if info else []) for name, _ in signs if hasattr(m, name)}
    if "ge" in limits and "le" in limits:
        return f"{_number(limits['ge'])} to {_number(limits['le'])}"
    return " and ".join(f"{sign} {_number(limits[name])}" for name, sign in signs if name in limits)


def _why_not_a_number(value: object, want_int: bool) -> str:
    if isinstance(value, bool):
        return "true/false is never a number"
    if isinstance(value, str):
        return "a quoted string is not a number; write it without quotes"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN and infinity are not allowed"
    if isinstance(value, float) and want_int:
        return "a float is not an integer"
    return f"a {type(value).__name__} is not a number"


def _is_kind_error(error: Any) -> bool:
    return error["type"] in _KIND_ERRORS or (error["type"] == "literal_error" and isinstance(error["input"], bool))


def explain(exc: ValidationError, model: type[BaseModel]) -> tuple[str, bool]:
    """One line for ``exc`` naming the field and its allowed range, and whether it is a mistake in
    the file (a value of the wrong kind) rather than one invalid grid point."""
    kinds = [e for e in exc.errors() if _is_kind_error(e)]
    if not kinds:
        line, first = describe(exc, model), exc.errors()[0]
        bounds = _bounds(_field(model, tuple(first["loc"]))[1]) if first["type"] in _RANGE_ERRORS else ""
        return (f"{line}; allowed: {bounds}" if bounds else line), False
    error = kinds[0]
    value = error["input"]
    path, info = _field(model, tuple(error["loc"]))
    shown = "true" if value is True else "false" if value is False else repr(value)
    if error["type"] not in ("int_type", "float_type", "finite_number") or isinstance(value, (dict, list)):
        return f"{path}: {str(error['msg']).removeprefix('Value error, ')} (got {shown})", True
    bounds = _bounds(info)
    expected = ("an integer" if error["type"] == "int_type" else "a finite number") + (f" ({bounds})" if bounds else "")
    return f"{path}: expected {expected}, got {shown}: {_why_not_a_number(value, error['type'] == 'int_type')}", True


def _static_cache_warning(exp: Experiment) -> str | None:
    """004: a static KV cache (CUDA graphs) needs every batch padded to one length."""
    section = exp.config.pytorch
    batch = (section.batch_size or 1) if section else 1
    if section is None or section.cache_implementation not in ("static", "offloaded_static") or batch <= 1:
        return None
    return (
        f"experiment {exp.index + 1}: pytorch.cache_implementation {section.cache_implementation} with batch_size "
        f"{batch}: a static cache pads every batch to one length (004); prompts of different lengths add padding, "
        "which costs time and energy but counts as no token"
    )


def _point(raw: dict[str, Any], sweep: dict[str, Any]) -> str:
    """The swept values of a grid point, as ``key=value`` (a scoped key read in its section)."""
    parts = []
    for key in sweep:
        value: Any = raw
        for part in str(key).split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None and str(key) in raw:
            value = raw[str(key)]
        parts.append(f"{key}={'null' if value is None else value}")
    return ", ".join(parts)


def _validate(index: int, raw: dict[str, Any], origin: Path) -> Experiment | Skipped:
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        if has_unknown_key(exc):
            # A typo is a mistake in the file, not an invalid grid point: stop here.
            raise ConfigError(f"{origin}: {describe(exc, ExperimentConfig, STUDY_KEYS)}") from None
        reason, mistake = explain(exc, ExperimentConfig)
        if mistake:  # so is a value of the wrong kind (true, "4", .nan where a number goes)
            raise ConfigError(f"{origin}: {reason}") from None
        return Skipped(index=index, raw=raw, reason=reason)
    return Experiment(index=index, config=config, config_hash=config_hash(config))


def load_study(
    path: Path, name_override: str | None = None, max_experiments: int = MAX_EXPERIMENTS, profile: str | None = None
) -> Study:
    """Parse ``path``: a study when it has ``sweep:`` or ``experiments:``, else one experiment
    (``profile``: --profile, applied as profiles.py says)."""
    path = Path(path)
    return study_from_data(_load_mapping(path), path, name_override, max_experiments, profile)


def load_planned_study(
    study_dir: Path, planned_from: str | None, name_override: str | None = None, profile: str | None = None
) -> Study:
    """The study a study directory was planned from: the copy inside it (what was planned, never
    the live file, which may have changed since: another ``runners:`` or image), its relative
    paths anchored where the original file was, when that is still there (a worker on another
    node or in a pod may not see it: then the copy's own directory)."""
    copy = StudyDir(study_dir).study_copy
    original = Path(planned_from) if planned_from else None
    anchor = original if original is not None and original.parent.is_dir() else copy
    return study_from_data(_load_mapping(copy), anchor, name_override, profile=profile)


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
    data: dict[str, Any],
    path: Path,
    name_override: str | None = None,
    max_experiments: int = MAX_EXPERIMENTS,
    profile: str | None = None,
) -> Study:
    """Build a Study from an already-loaded mapping; ``path`` anchors relative paths and names;
    ``profile`` fills the experiment fields it names where the study is silent and sets its
    study_execution fields."""
    shorthand = get_profile(profile)
    base_ref = data.get("base")
    shared = {k: v for k, v in data.items() if k not in STUDY_KEYS}
    if base_ref is not None:
        if not isinstance(base_ref, str) or "\x00" in base_ref:
            raise ConfigError(f"{path}: base: expected a file path, got {base_ref!r}")
        base_path = (path.parent / base_ref).resolve()
        base = {k: v for k, v in _load_mapping(base_path).items() if k not in STUDY_KEYS}
        shared = deep_merge(base, shared)
    if shorthand is not None:
        shared = deep_merge(shorthand.experiment, shared)
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
        raise ConfigError(f"{path}: study_execution: {explain(exc, StudyExecution)[0]}") from None
    if shorthand is not None:
        execution = execution.model_copy(update=shorthand.execution)
    images, runners = _validate_runners(data.get("runners"), path)

    size = count_configs(shared, sweep, explicit)
    if size > max_experiments:
        raise ConfigError(
            f"{path}: the study expands to {size:,} experiments, more than the limit of {max_experiments:,} "
            "(--max-experiments raises it if you mean it)"
        )
    raws = expand(shared, sweep, explicit) if (sweep or explicit) else expand(shared, None, None) or [shared]
    validated = [_validate(i, raw, path) for i, raw in enumerate(raws)]
    # Before duplicates go: output_dir is not part of an experiment's identity (its config hash).
    output_dirs = sorted({r.config.output_dir for r in validated if isinstance(r, Experiment) and r.config.output_dir})
    results = _deduplicate(validated)
    experiments = tuple(r for r in results if isinstance(r, Experiment))
    skipped = tuple(dataclasses.replace(r, point=_point(r.raw, sweep or {})) for r in results if isinstance(r, Skipped))
    if not experiments:
        first = skipped[0].reason if skipped else "the file defines no experiment"
        raise ConfigError(f"{path}: no valid experiment remains ({len(skipped)} skipped; first: {first})")
    if len(output_dirs) > 1:
        raise ConfigError(
            f"{path}: experiments name {len(output_dirs)} output_dir values ({', '.join(output_dirs)}); a study "
            "writes one study directory: set output_dir once, at the top level"
        )
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
        profile=profile,
        output_dir=(path.parent / output_dirs[0]) if output_dirs else None,
        warnings=tuple(w for e in experiments if (w := _static_cache_warning(e))),
    )
