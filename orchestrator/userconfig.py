"""Per-user settings: a YAML file in the platform's config directory, overridden by the environment.

The file is optional and holds machine facts, never experiment parameters (001): where results
go, the Hugging Face cache, the image per engine, and the factors that turn measured energy into
energy at the wall (PUE) and CO2e (grid carbon intensity). Every effective value remembers where
it came from, so ``llem config`` can say so and a study can record it.

Precedence, lowest first: built-in default, the user config file, the environment. CLI flags of
``llem run`` override all three.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from platformdirs import user_config_path
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llem_agent.contract import ENGINES, canonical_engine

from . import __version__, yamlsafe
from .errors import ConfigError
from .runners import RunnerKind, parse_runner
from .validation import did_you_mean

CONFIG_ENV = "LLEM_CONFIG"
# Prebuilt images are published to ghcr.io (the images workflow); `make images` builds the
# pytorch one locally under the same name.
GHCR_OWNER = "llem-project"
DEFAULT_IMAGE = f"ghcr.io/{GHCR_OWNER}/llem/{{engine}}:{__version__}"
# 002's thermal pauses between GPU runs and between cycles, where neither study nor user config says.
DEFAULT_CONFIG_GAP_S = 60.0
DEFAULT_CYCLE_GAP_S = 300.0


def config_path() -> Path:
    """LLEM_CONFIG, else ``<platform config dir>/llem/config.yaml`` (~/.config/llem on Linux)."""
    explicit = os.environ.get(CONFIG_ENV)
    return Path(explicit).expanduser() if explicit else user_config_path("llem") / "config.yaml"


class _Section(BaseModel):
    # Strict and finite as a study is: `datacenter_pue: true` or "1.2" is refused, not read as a number.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class OutputSection(_Section):
    results_dir: str | None = None
    model_cache_dir: str | None = None


class MeasurementSection(_Section):
    datacenter_pue: float | None = Field(default=None, ge=1.0, le=10.0)
    carbon_intensity_gco2_kwh: float | None = Field(default=None, ge=0.0, le=5000.0)
    datacenter_location: str | None = None


class SlurmSection(_Section):
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # sbatch --time, e.g. 04:00:00
    sbatch_lines: list[str] = Field(default_factory=list, max_length=1000)  # extra "#SBATCH ..." lines, verbatim


class ExecutionSection(_Section):
    """This machine's thermal pauses (002): used where a study's study_execution leaves them unset,
    between runs that have GPUs (CPU runs do not pause by default)."""

    config_gap_seconds: float | None = Field(default=None, ge=0.0, le=86_400.0)
    cycle_gap_seconds: float | None = Field(default=None, ge=0.0, le=86_400.0)


class UserConfigFile(_Section):
    output: OutputSection = Field(default_factory=OutputSection)
    study_execution: ExecutionSection = Field(default_factory=ExecutionSection)
    slurm: SlurmSection = Field(default_factory=SlurmSection)
    runners: dict[str, str] = Field(default_factory=dict)
    images: dict[str, str] = Field(default_factory=dict)
    measurement: MeasurementSection = Field(default_factory=MeasurementSection)


@dataclass(frozen=True)
class Setting:
    """One effective value and where it came from."""

    value: Any
    source: str


@dataclass(frozen=True)
class MeasurementFactors:
    """What turns measured device energy into energy at the wall and CO2e; recorded per study."""

    datacenter_pue: float = 1.0
    carbon_intensity_gco2_kwh: float | None = None
    datacenter_location: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "datacenter_pue": self.datacenter_pue,
            "carbon_intensity_gco2_kwh": self.carbon_intensity_gco2_kwh,
            "datacenter_location": self.datacenter_location,
            "sources": dict(self.sources),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasurementFactors:
        return cls(
            datacenter_pue=float(data.get("datacenter_pue") or 1.0),
            carbon_intensity_gco2_kwh=data.get("carbon_intensity_gco2_kwh"),
            datacenter_location=data.get("datacenter_location"),
            sources=dict(data.get("sources") or {}),
        )


@dataclass(frozen=True)
class UserConfig:
    """The effective user configuration: each key's value and source."""

    path: Path
    file_found: bool
    settings: dict[str, Setting]

    def value(self, key: str) -> Any:
        return self.settings[key].value

    @property
    def results_dir(self) -> Path:
        return Path(self.value("output.results_dir")).expanduser()

    @property
    def hf_home(self) -> Path:
        return Path(self.value("output.model_cache_dir")).expanduser()

    def images(self) -> dict[str, str]:
        return {engine: self.value(f"images.{engine}") for engine in ENGINES}

    def runners(self) -> dict[str, RunnerKind]:
        """Runners set in the user config file (or LLEM_RUNNER_<ENGINE>): engine -> docker | local."""
        return {e: self.value(f"runners.{e}") for e in ENGINES if self.value(f"runners.{e}") is not None}

    def gaps_s(self, gpus: bool) -> tuple[float, float]:
        """This machine's pauses (between runs, between cycles) where a study is silent: the user
        config's (002: 60 s and 300 s by default) between GPU runs; none between CPU runs, whose
        package cools in seconds and whose runs are short."""
        if not gpus:
            return 0.0, 0.0
        return self.value("study_execution.config_gap_seconds"), self.value("study_execution.cycle_gap_seconds")

    def factors(self) -> MeasurementFactors:
        keys = ("datacenter_pue", "carbon_intensity_gco2_kwh", "datacenter_location")
        return MeasurementFactors(
            datacenter_pue=self.value("measurement.datacenter_pue"),
            carbon_intensity_gco2_kwh=self.value("measurement.carbon_intensity_gco2_kwh"),
            datacenter_location=self.value("measurement.datacenter_location"),
            sources={k: self.settings[f"measurement.{k}"].source for k in keys},
        )


def _read_file(path: Path) -> UserConfigFile | None:
    text = yamlsafe.read_text(path, "user config")  # bounded as a study file is
    if text is None:
        return None
    try:
        data = yamlsafe.load(text, f"user config {path}")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"user config {path}: not valid YAML{where}") from None
    if data is None:
        return UserConfigFile()
    if not isinstance(data, dict):
        raise ConfigError(f"user config {path}: expected a mapping at the top, got {type(data).__name__}")
    try:
        return UserConfigFile.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            known = _known_keys(error["loc"][:-1])
            hint = did_you_mean(str(error["loc"][-1]), known)
            raise ConfigError(f"user config {path}: unknown key '{loc}'{hint}") from None
        raise ConfigError(f"user config {path}: {loc}: {error['msg']} (got {error.get('input')!r})") from None


def _known_keys(parent: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = UserConfigFile
    for part in parent:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _env_float(name: str, low: float, high: float) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


def _images_from_file(cfg: UserConfigFile, path: Path) -> tuple[dict[str, str], dict[str, RunnerKind]]:
    """``images: {engine: ref}`` and ``runners: {engine: docker | docker:ref | local}``; images wins."""
    images: dict[str, str] = {}
    runners: dict[str, RunnerKind] = {}
    for section, mapping in (("runners", cfg.runners), ("images", cfg.images)):
        for engine, value in mapping.items():
            name = canonical_engine(engine)
            if name not in ENGINES:
                raise ConfigError(
                    f"user config {path}: {section}: unknown engine '{engine}'{did_you_mean(engine, ENGINES)}"
                )
            if section == "images":
                images[name] = value
                continue
            kind, image = parse_runner(value, f"user config {path}: runners.{engine}")
            runners[name] = kind
            if image is not None:
                images[name] = image
    return images, runners


def load_user_config() -> UserConfig:
    """The effective user configuration; a broken file is a one-line ConfigError."""
    path = config_path()
    cfg = _read_file(path)
    found = cfg is not None
    cfg = cfg or UserConfigFile()
    from_file = f"user config {path}"
    settings: dict[str, Setting] = {}

    def put(key: str, default: Any, file_value: Any, env: str | None, env_value: Any = None) -> None:
        if env is not None and env_value is not None:
            settings[key] = Setting(env_value, f"env {env}")
        elif file_value is not None:
            settings[key] = Setting(file_value, from_file)
        else:
            settings[key] = Setting(default, "default")

    put("output.results_dir", "results", cfg.output.results_dir, "LLEM_RESULTS_DIR", os.environ.get("LLEM_RESULTS_DIR"))
    put(
        "output.model_cache_dir",
        str(Path.home() / ".cache" / "huggingface"),
        cfg.output.model_cache_dir,
        "HF_HOME",
        os.environ.get("HF_HOME"),
    )
    file_images, file_runners = _images_from_file(cfg, path)
    for engine in ENGINES:
        env = f"LLEM_IMAGE_{engine.upper()}"
        put(f"images.{engine}", DEFAULT_IMAGE.format(engine=engine), file_images.get(engine), env, os.environ.get(env))
    for engine in ENGINES:
        env = f"LLEM_RUNNER_{engine.upper()}"
        raw = os.environ.get(env)  # a bad value is a one-line error here, not mid-study
        put(f"runners.{engine}", None, file_runners.get(engine), env, parse_runner(raw, env)[0] if raw else None)
    m = cfg.measurement
    put("measurement.datacenter_pue", 1.0, m.datacenter_pue, "LLEM_DATACENTER_PUE",
        _env_float("LLEM_DATACENTER_PUE", 1.0, 10.0))  # fmt: skip
    put("measurement.carbon_intensity_gco2_kwh", None, m.carbon_intensity_gco2_kwh, "LLEM_CARBON_INTENSITY",
        _env_float("LLEM_CARBON_INTENSITY", 0.0, 5000.0))  # fmt: skip
    put("measurement.datacenter_location", None, m.datacenter_location, "LLEM_DATACENTER_LOCATION",
        os.environ.get("LLEM_DATACENTER_LOCATION") or None)  # fmt: skip
    put("study_execution.config_gap_seconds", DEFAULT_CONFIG_GAP_S, cfg.study_execution.config_gap_seconds, None)
    put("study_execution.cycle_gap_seconds", DEFAULT_CYCLE_GAP_S, cfg.study_execution.cycle_gap_seconds, None)
    for key in ("partition", "account", "time"):
        put(f"slurm.{key}", None, getattr(cfg.slurm, key), None)
    put("slurm.sbatch_lines", [], cfg.slurm.sbatch_lines or None, None)
    return UserConfig(path=path, file_found=found, settings=settings)
