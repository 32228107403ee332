"""Statistics across cycles: read a study directory, aggregate every metric, write the summaries.

A study directory holds ``manifest.json`` (every run's status), ``experiments.json`` (the
resolved design) and ``runs/<run_id>/result.json``. From them this module builds:

- ``runs.csv`` / ``runs.parquet``: one row per run (every run, failed and skipped included),
  its parameters, status and every metric: the long table to load into pandas.
- ``summary.json``, ``summary.csv``, ``summary.parquet``: one row per experiment with, for each
  metric, the mean, standard deviation, coefficient of variation, 95% confidence interval
  (Student's t) and n over its completed cycles, plus warnings where the spread is too wide to
  rank configurations.

Energy at the wall (``wall_energy_j`` = ``energy_j`` x PUE) and ``co2e_g`` (wall energy x grid
carbon intensity) are derived here from the factors recorded when the study ran (host.json),
and the factors themselves are written beside them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic_core import from_json

from llem_agent.contract import EXPERIMENT_FILE, RESULT_FILE, write_atomic

from . import __version__
from .errors import ConfigError
from .manifest import MANIFEST_FILE, Manifest, study_dirs
from .userconfig import MeasurementFactors

EXPERIMENTS_FILE = "experiments.json"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
RUNS_CSV = "runs.csv"
RUNS_PARQUET = "runs.parquet"
SUMMARY_SCHEMA_VERSION = "1"
HOST_FILE = "host.json"
METRICS_CACHE = ".metrics-cache.json"
# A coefficient of variation above this makes a single experiment's mean doubtful.
CV_WARNING = 0.10
J_PER_KWH = 3.6e6

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    better: Better | None
    get: Callable[[dict[str, Any]], Any]


def _path(*keys: str) -> Callable[[dict[str, Any]], Any]:
    def get(result: dict[str, Any]) -> Any:
        value: Any = result
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    return get


def _dist(field_name: str, short: str, label: str) -> list[Metric]:
    return [
        Metric(f"{short}_{stat}_s", f"{label} {stat} (s)", "lower", _path("latency", field_name, stat))
        for stat in ("mean", "p50", "p90", "p99")
    ]


def _per_output_token(key: str) -> Callable[[dict[str, Any]], Any]:
    def get(result: dict[str, Any]) -> Any:
        value, tokens = _path("energy", key)(result), result.get("output_tokens")
        return value / tokens if value is not None and tokens else None

    return get


# Every metric of a run, in table order. Names carry their unit and denominator.
METRICS: tuple[Metric, ...] = (
    Metric("output_tokens_per_s", "output tokens/s", "higher", _path("throughput", "output_tokens_per_s")),
    Metric("total_tokens_per_s", "tokens/s (in + out)", "higher", _path("throughput", "total_tokens_per_s")),
    Metric("requests_per_s", "requests/s", "higher", _path("throughput", "requests_per_s")),
    *_dist("ttft_s", "ttft", "time to first token"),
    *_dist("inter_token_s", "itl", "inter-token latency"),
    *_dist("e2e_s", "e2e", "end-to-end latency"),
    Metric("energy_j", "energy (J)", "lower", _path("energy", "energy_j")),
    Metric("adjusted_energy_j", "energy above idle (J)", "lower", _path("energy", "adjusted_energy_j")),
    Metric("trace_energy_j", "integrated power trace (J)", None, _path("energy", "trace_energy_j")),
    Metric("j_per_output_token", "J per output token", "lower", _path("energy", "j_per_output_token")),
    Metric(
        "adjusted_j_per_output_token", "J above idle per output token", "lower", _per_output_token("adjusted_energy_j")
    ),
    Metric("j_per_token", "J per token (in + out)", "lower", _path("energy", "j_per_token")),
    Metric("j_per_request", "J per request", "lower", _path("energy", "j_per_request")),
    Metric("mean_power_w", "mean power (W)", None, _path("energy", "mean_power_w")),
    Metric("peak_power_w", "peak power (W)", None, _path("energy", "peak_power_w")),
    Metric("prefill_energy_j", "prefill energy (J)", "lower", _path("energy", "prefill_energy_j")),
    Metric("decode_energy_j", "decode energy (J)", "lower", _path("energy", "decode_energy_j")),
    Metric("cpu_energy_j", "CPU energy, RAPL (J)", "lower", _path("energy", "cpu_energy_j")),
    Metric("peak_device_mb", "peak device memory (MiB)", "lower", _path("memory", "peak_device_mb")),
    Metric("peak_host_rss_mb", "peak host RSS (MiB)", "lower", _path("memory", "peak_host_rss_mb")),
    Metric("flops_estimate", "FLOPs estimate", None, _path("flops_estimate")),
    Metric("input_tokens", "input tokens", None, _path("input_tokens")),
    Metric("output_tokens", "output tokens", None, _path("output_tokens")),
    Metric("load_s", "load time (s)", "lower", _path("timings", "load_s")),
    Metric("warmup_s", "warmup time (s)", None, _path("timings", "warmup_s")),
    Metric("measure_s", "measured window (s)", None, _path("timings", "measure_s")),
)
DERIVED: tuple[Metric, ...] = (
    Metric("wall_energy_j", "energy at the wall, x PUE (J)", "lower", _path("wall_energy_j")),
    Metric("co2e_g", "CO2e (g)", "lower", _path("co2e_g")),
)
ALL_METRICS: tuple[Metric, ...] = METRICS + DERIVED
METRIC_BY_NAME = {m.name: m for m in ALL_METRICS}
_METRICS_KEY = hashlib.sha256((",".join(m.name for m in METRICS) + ";window").encode()).hexdigest()[:8]
# The metrics users rank configurations by; spread warnings are about these.
KEY_METRICS = ("output_tokens_per_s", "j_per_output_token", "e2e_p50_s")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; the dotted names of 003's sweep grammar."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def varying_keys(params: Sequence[dict[str, Any]]) -> list[str]:
    """The parameters whose value differs between experiments (what the study swept)."""
    if len(params) < 2:
        return []
    keys = set().union(*params)
    return sorted(k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in params}) > 1)


@dataclass(frozen=True)
class Stat:
    """Mean and spread of one metric over an experiment's completed runs."""

    n: int
    mean: float | None
    std: float | None = None
    cv: float | None = None
    ci95_low: float | None = None
    ci95_high: float | None = None

    def half_width(self, scale: float = 1.0) -> float | None:
        """Half the 95% interval, in units x ``scale`` (None without an interval)."""
        if self.mean is None or self.ci95_high is None:
            return None
        return (self.ci95_high - self.mean) * scale

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "cv": self.cv,
            "ci95_low": self.ci95_low,
            "ci95_high": self.ci95_high,
        }


def format_mean_ci(mean: float | None, half: float | None, digits: int = 4) -> str:
    """``1,536 ± 127`` / ``0.2003 ± 0.0303``: the mean to ``digits`` significant figures and the
    95% half-width to the same decimals (– when there is no value)."""
    if mean is None or not math.isfinite(mean):
        return "–"
    magnitude = math.floor(math.log10(abs(mean))) if mean != 0 else 0
    decimals = max(0, digits - 1 - magnitude)
    text = f"{mean:,.{decimals}f}"
    return text if half is None else f"{text} ± {half:,.{decimals}f}"


def describe(values: Iterable[float | None]) -> Stat:
    """n, mean, sample standard deviation, CV and the 95% t-interval of the mean."""
    import numpy as np

    data = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(data.size)
    if n == 0:
        return Stat(n=0, mean=None)
    mean = float(data.mean())
    if n == 1:
        return Stat(n=1, mean=mean)
    from scipy.special import stdtrit  # the t quantile, without importing all of scipy.stats

    std = float(data.std(ddof=1))
    half = float(stdtrit(n - 1, 0.975)) * std / math.sqrt(n)
    cv = std / abs(mean) if mean != 0 else None
    return Stat(n=n, mean=mean, std=std, cv=cv, ci95_low=mean - half, ci95_high=mean + half)


@dataclass
class RunRecord:
    """One run as the study directory tells it."""

    run_id: str
    experiment: int  # 1-based, as users see it
    cycle: int
    status: str
    failure_kind: str | None
    failure_message: str | None
    wall_s: float | None
    metrics: dict[str, float | None]
    flags: list[str]
    unavailable_reason: str | None = None


@dataclass
class ExperimentSummary:
    index: int  # 1-based
    config_hash: str
    engine: str
    label: str
    params: dict[str, Any]
    runs: int
    completed: int
    stats: dict[str, Stat]
    flags: dict[str, int]
    warnings: list[str] = field(default_factory=list)


@dataclass
class StudySummary:
    study_dir: Path
    manifest: Manifest
    swept: list[str]
    experiments: list[ExperimentSummary]
    runs: list[RunRecord]
    factors: MeasurementFactors
    warnings: list[str]
    energy_unavailable: str | None
    manifest_sha256: str

    def as_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "llem_version": __version__,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "study_name": m.study_name,
            "study_id": m.study_id,
            "study_status": m.status,
            "study_design_hash": m.study_design_hash,
            "manifest_sha256": self.manifest_sha256,
            "n_cycles": m.n_cycles,
            "experiment_order": m.experiment_order,
            "factors": self.factors.as_dict(),
            "swept": self.swept,
            "energy_unavailable_reason": self.energy_unavailable,
            "warnings": self.warnings,
            "metrics": {m.name: {"label": m.label, "better": m.better} for m in ALL_METRICS},
            "experiments": [
                {
                    "experiment": e.index,
                    "config_hash": e.config_hash,
                    "engine": e.engine,
                    "label": e.label,
                    "params": e.params,
                    "runs": e.runs,
                    "completed": e.completed,
                    "flags": e.flags,
                    "warnings": e.warnings,
                    "metrics": {name: s.as_dict() for name, s in e.stats.items()},
                }
                for e in self.experiments
            ],
            "not_completed": [
                {"run_id": r.run_id, "status": r.status, "kind": r.failure_kind, "message": r.failure_message}
                for r in self.runs
                if r.status != "completed"
            ],
            "skipped_grid_points": [{"index": s.index + 1, "reason": s.reason} for s in m.skipped],
        }


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable.

    Parsed by pydantic-core (already here for the contract): six times faster than the standard
    library on result.json files, which carry every request's token times; reading a 1,000-run
    study cold is mostly this."""
    try:
        return from_json(path.read_bytes())
    except (OSError, ValueError):
        return None


def write_design(study_dir: Path, design_hash: str, experiments: Iterable[tuple[int, str, dict[str, Any]]]) -> None:
    """``experiments.json``: every experiment's resolved config (index, config hash, config)."""
    design = {
        "study_design_hash": design_hash,
        "experiments": [{"index": i, "config_hash": h, "config": c} for i, h, c in experiments],
    }
    write_atomic(study_dir / EXPERIMENTS_FILE, json.dumps(design, indent=2))


def _experiment_configs(study_dir: Path, manifest: Manifest) -> dict[int, dict[str, Any]]:
    """Each experiment's config: ``experiments.json``, else any of its runs' ``experiment.json``."""
    configs: dict[int, dict[str, Any]] = {}
    design = read_json(study_dir / EXPERIMENTS_FILE)
    if isinstance(design, dict):
        for item in design.get("experiments", []):
            configs[int(item["index"])] = item["config"]
    for entry in manifest.runs:
        if entry.experiment_index not in configs:
            request = read_json(study_dir / "runs" / entry.run_id / EXPERIMENT_FILE)
            if isinstance(request, dict) and isinstance(request.get("config"), dict):
                configs[entry.experiment_index] = request["config"]
    return configs


def _factors(study_dir: Path, current: MeasurementFactors | None) -> MeasurementFactors:
    """The factors recorded when the study ran; a carbon intensity missing then comes from now."""
    host = read_json(study_dir / HOST_FILE)
    recorded = host.get("measurement") if isinstance(host, dict) else None
    late = " (applied after the run)"
    if not isinstance(recorded, dict):
        if current is None:
            return MeasurementFactors(sources={"datacenter_pue": "default"})
        return replace(current, sources={k: v + late for k, v in current.sources.items()})
    factors = MeasurementFactors.from_dict(recorded)
    if factors.carbon_intensity_gco2_kwh is None and current and current.carbon_intensity_gco2_kwh is not None:
        key = "carbon_intensity_gco2_kwh"
        factors = replace(
            factors,
            carbon_intensity_gco2_kwh=current.carbon_intensity_gco2_kwh,
            sources=factors.sources | {key: current.sources.get(key, "") + late},
        )
    return factors


def _extract(result: dict[str, Any]) -> dict[str, Any]:
    """What aggregation needs from one result.json: its metrics, flags and energy caveat."""
    values: dict[str, float | None] = {}
    for metric in METRICS:
        value = metric.get(result)
        values[metric.name] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    energy = result.get("energy") or {}
    timings = result.get("timings") or {}
    start, length = timings.get("window_started_at"), timings.get("measure_s")
    window = [start, start + length] if isinstance(start, (int, float)) and isinstance(length, (int, float)) else None
    return {
        "metrics": values,
        "flags": [f.get("code", "?") for f in energy.get("flags") or []],
        "unavailable_reason": energy.get("unavailable_reason"),
        "window": window,
    }


def measured_windows(study_dir: Path, manifest: Manifest) -> dict[str, tuple[float, float]]:
    """When each completed run was measured (Unix times), from its result."""
    out = {}
    for entry in manifest.runs:
        if entry.status == "completed":
            data = run_data(study_dir / "runs" / entry.run_id)
            if data is not None and data.get("window"):
                out[entry.run_id] = (float(data["window"][0]), float(data["window"][1]))
    return out


def overlaps(
    windows: dict[str, tuple[float, float]], hosts: dict[str, str | None] | None = None
) -> dict[str, set[str]]:
    """Runs whose measured windows overlapped another run's on the same host, and which (runs on
    other nodes of a cluster share nothing that is measured)."""
    found: dict[str, set[str]] = {}
    ordered = sorted(windows.items(), key=lambda item: item[1][0])
    host = (hosts or {}).get
    for i, (run_a, (_, end_a)) in enumerate(ordered):
        for run_b, (start_b, _) in ordered[i + 1 :]:
            if start_b >= end_a:
                break
            if host(run_a) != host(run_b):
                continue
            found.setdefault(run_a, set()).add(run_b)
            found.setdefault(run_b, set()).add(run_a)
    return found


def run_data(run_dir: Path) -> dict[str, Any] | None:
    """:func:`_extract` of the run's result, through a small per-run cache.

    A result.json holds every request's token times and can be megabytes; parsing 1,000 of them
    would dominate `llem results`. The cache (``.metrics-cache.json``) is keyed by the result's
    size and mtime and by the metric list, so a re-run or a new llem version invalidates it.
    """
    result_path = run_dir / RESULT_FILE
    try:
        st = result_path.stat()
    except OSError:
        return None
    key = f"{st.st_size}:{st.st_mtime_ns}:{_METRICS_KEY}"
    cached = read_json(run_dir / METRICS_CACHE)
    if isinstance(cached, dict) and cached.get("key") == key:
        data: dict[str, Any] = cached["data"]
        return data
    result = read_json(result_path)
    if not isinstance(result, dict):
        return None
    data = _extract(result)
    tmp = run_dir / f".{METRICS_CACHE}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):  # a cache: no fsync, and a read-only study is fine
        tmp.write_text(json.dumps({"key": key, "data": data}), encoding="utf-8")
        os.replace(tmp, run_dir / METRICS_CACHE)
    return data


def _run_metrics(values: dict[str, float | None], factors: MeasurementFactors) -> dict[str, float | None]:
    """The run's metrics plus those derived from the measurement factors."""
    values = dict(values)
    energy = values["energy_j"]
    wall = None if energy is None else energy * factors.datacenter_pue
    values["wall_energy_j"] = wall
    ci = factors.carbon_intensity_gco2_kwh
    values["co2e_g"] = None if wall is None or ci is None else wall / J_PER_KWH * ci
    return values


def load_manifest(study_dir: Path) -> tuple[Manifest, str]:
    path = study_dir / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{study_dir} is not a llem study directory (no {MANIFEST_FILE})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValueError:
        raise ConfigError(
            f"{path} is damaged (not a manifest llem can read); each completed run's result.json is still under "
            f"{study_dir}/runs"
        ) from None
    return manifest, hashlib.sha256(raw).hexdigest()


def experiment_label(params: dict[str, Any], swept: Sequence[str], engine: str) -> str:
    """``engine`` (when swept) and ``key=value`` of each swept parameter; the engine alone otherwise.
    A parameter of another engine's section (``vllm.engine.max_num_seqs`` of a pytorch experiment)
    is not this experiment's: it is left out, never shown as ``=None``."""
    from .sweep import engine_scope

    parts = [f"{k}={params.get(k)}" for k in swept if k != "engine" and engine_scope(k) in (None, engine)]
    if "engine" in swept:
        parts.insert(0, engine)
    return " ".join(parts) if parts else engine


def aggregate(study_dir: Path, current_factors: MeasurementFactors | None = None) -> StudySummary:
    """Read a study directory and compute every statistic (nothing is written)."""
    study_dir = Path(study_dir)
    manifest, digest = load_manifest(study_dir)
    factors = _factors(study_dir, current_factors)
    configs = _experiment_configs(study_dir, manifest)
    indices = sorted({e.experiment_index for e in manifest.runs})
    params = {i: flatten(configs.get(i, {})) for i in indices}
    swept = varying_keys([params[i] for i in indices])
    records: list[RunRecord] = []
    unavailable: set[str] = set()
    windows: dict[str, tuple[float, float]] = {}  # when each completed run was measured
    for entry in manifest.runs:
        metrics: dict[str, float | None] = {m.name: None for m in ALL_METRICS}
        flags: list[str] = []
        reason = None
        status, kind = entry.status, entry.failure.kind if entry.failure else None
        message = entry.failure.message if entry.failure else None
        if entry.status == "completed":
            data = run_data(study_dir / "runs" / entry.run_id)
            if data is not None:
                if data.get("window"):
                    windows[entry.run_id] = (float(data["window"][0]), float(data["window"][1]))
                metrics = _run_metrics(data["metrics"], factors)
                flags = data["flags"]
                reason = data["unavailable_reason"]
                if reason:
                    unavailable.add(reason)
            else:
                status, kind, message = "failed", "corrupt_result", f"{RESULT_FILE} missing or unreadable"
        records.append(
            RunRecord(
                run_id=entry.run_id,
                experiment=entry.experiment_index + 1,
                cycle=entry.cycle,
                status=status,
                failure_kind=kind,
                failure_message=message,
                wall_s=entry.wall_s,
                metrics=metrics,
                flags=flags,
                unavailable_reason=reason,
            )
        )
    by_experiment: dict[int, list[RunRecord]] = {}
    for r in records:
        by_experiment.setdefault(r.experiment, []).append(r)
    hashes = {e.experiment_index: e.config_hash for e in reversed(manifest.runs)}  # the first run's
    experiments = []
    for i in indices:
        mine = by_experiment[i + 1]
        done = [r for r in mine if r.status == "completed"]
        stats = {m.name: describe(r.metrics[m.name] for r in done) for m in ALL_METRICS}
        flag_counts: dict[str, int] = {}
        for r in done:
            for code in r.flags:
                flag_counts[code] = flag_counts.get(code, 0) + 1
        engine = str(params[i].get("engine", "?"))
        summary = ExperimentSummary(
            index=i + 1,
            config_hash=hashes[i],
            engine=engine,
            label=experiment_label(params[i], swept, engine),
            params=params[i],
            runs=len(mine),
            completed=len(done),
            stats=stats,
            flags=flag_counts,
        )
        summary.warnings = _experiment_warnings(summary)
        experiments.append(summary)
    return StudySummary(
        study_dir=study_dir,
        manifest=manifest,
        swept=swept,
        experiments=experiments,
        runs=records,
        factors=factors,
        warnings=_overlap_warnings(windows, manifest) + _ranking_warnings(experiments),
        energy_unavailable="; ".join(sorted(unavailable)) or None,
        manifest_sha256=digest,
    )


def _experiment_warnings(e: ExperimentSummary) -> list[str]:
    out = []
    if e.completed == 0:
        out.append("no completed run")
    elif e.completed == 1:
        out.append("one completed run: no spread or confidence interval (run more cycles)")
    for name in KEY_METRICS:
        stat = e.stats[name]
        if stat.cv is not None and stat.cv > CV_WARNING:
            out.append(f"{name} varies by {stat.cv:.0%} (CV) across cycles")
    for code, count in sorted(e.flags.items()):
        out.append(f"{count} run(s) flagged {code}")
    return out


def _overlap_warnings(windows: dict[str, tuple[float, float]], manifest: Manifest) -> list[str]:
    """Runs measured at the same time (parallel runs) shared the host's power, memory bandwidth
    and cooling: comparing them is not comparing configurations alone."""
    found = overlaps(windows, {e.run_id: e.host for e in manifest.runs})
    if not found:
        return []
    shown = ", ".join(f"{a} with {', '.join(sorted(b))}" for a, b in sorted(found.items())[:4])
    more = " ..." if len(found) > 4 else ""
    return [
        f"{len(found)} runs were measured while other runs were ({shown}{more}): they shared this host's "
        "power, memory bandwidth and cooling, so compare them with care (run with --parallel 1 to avoid it)"
    ]


def _ranking_warnings(experiments: Sequence[ExperimentSummary]) -> list[str]:
    """Where neighbouring experiments' 95% intervals overlap, their order on a key metric is not
    established by the data; say so rather than let a table rank them."""
    out = []
    for name in KEY_METRICS:
        ranked = [e for e in experiments if e.stats[name].ci95_low is not None]
        ranked.sort(key=lambda e: e.stats[name].mean or 0.0)
        ties = [
            (a.index, b.index)
            for a, b in itertools.pairwise(ranked)
            if (b.stats[name].ci95_low or 0.0) <= (a.stats[name].ci95_high or 0.0)
        ]
        if ties:
            pairs = ", ".join(f"{a} and {b}" for a, b in ties[:5]) + (" ..." if len(ties) > 5 else "")
            out.append(f"{name}: 95% intervals overlap for experiments {pairs}; their order is not significant")
    return out


def run_rows(summary: StudySummary) -> list[dict[str, Any]]:
    """The long table: one row per run with its parameters, status, flags and metrics."""
    by_index = {e.index: e for e in summary.experiments}
    rows = []
    for r in summary.runs:
        exp = by_index[r.experiment]
        row: dict[str, Any] = {
            "study_id": summary.manifest.study_id,
            "run_id": r.run_id,
            "experiment": r.experiment,
            "cycle": r.cycle,
            "config_hash": exp.config_hash,
            "engine": exp.engine,
            "status": r.status,
            "failure_kind": r.failure_kind,
            "failure_message": r.failure_message,
            "wall_s": r.wall_s,
            "flags": ",".join(r.flags),
        }
        row |= {f"param.{k}": _scalar(exp.params.get(k)) for k in summary.swept}
        row |= r.metrics
        rows.append(row)
    return rows


def summary_rows(summary: StudySummary) -> list[dict[str, Any]]:
    """The wide per-experiment table: parameters, then mean/std/cv/ci/n of every metric."""
    rows = []
    for e in summary.experiments:
        row: dict[str, Any] = {
            "experiment": e.index,
            "label": e.label,
            "config_hash": e.config_hash,
            "engine": e.engine,
            "runs": e.runs,
            "completed": e.completed,
        }
        row |= {f"param.{k}": _scalar(e.params.get(k)) for k in summary.swept}
        for name, stat in e.stats.items():
            for key, value in stat.as_dict().items():
                row[f"{name}_{key}"] = value
        row["warnings"] = "; ".join(e.warnings)
        rows.append(row)
    return rows


def _scalar(value: Any) -> Any:
    """Parameters as table cells: lists and mappings become JSON text (one column type each)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool) or value is None:
        return value
    return value if isinstance(value, (int, float)) else str(value)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(rows[0]) if rows else []
    # Mixed-type parameter columns (1 and "auto") become text so one column has one type.
    data: dict[str, list[Any]] = {c: [row.get(c) for row in rows] for c in columns}
    for name, values in data.items():
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            data[name] = [None if v is None else str(v) for v in values]
    table = pa.table(data)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_summaries(summary: StudySummary) -> list[Path]:
    """Write the five files into the study directory (each atomically); return their paths."""
    d = summary.study_dir
    runs, per_exp = run_rows(summary), summary_rows(summary)
    write_atomic(d / SUMMARY_JSON, json.dumps(summary.as_json(), indent=2, allow_nan=False))
    write_atomic(d / SUMMARY_CSV, _csv_text(per_exp))
    write_atomic(d / RUNS_CSV, _csv_text(runs))
    _write_parquet(per_exp, d / SUMMARY_PARQUET)
    _write_parquet(runs, d / RUNS_PARQUET)
    return [d / SUMMARY_JSON, d / SUMMARY_CSV, d / SUMMARY_PARQUET, d / RUNS_CSV, d / RUNS_PARQUET]


def summarise(study_dir: Path, current_factors: MeasurementFactors | None = None) -> StudySummary:
    """Aggregate and write the summaries; a read-only study directory is summarised anyway."""
    summary = aggregate(study_dir, current_factors)
    with contextlib.suppress(OSError):
        write_summaries(summary)
    return summary


def newest_study(root: Path) -> Path:
    """The most recently created study directory under ``root``."""
    found = [(manifest.created_at, str(path)) for manifest, path in study_dirs(root)]
    if not found:
        raise ConfigError(f"no study directories under {root}; run a study first or name one")
    return Path(max(found)[1])
