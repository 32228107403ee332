"""Statistics across cycles: read a study directory, aggregate every metric, write the summaries.

A study directory (:mod:`studydir`) holds ``manifest.json`` (every run's status),
``experiments.json`` (the resolved design) and ``runs/<run_id>/result.json``, each read through
its one reader. From them this module builds a :class:`StudySummary`: per run and per experiment
every metric of :mod:`stats` and its statistics, with warnings where the spread is too wide to
rank configurations (:mod:`summary`, which writes it out: summary.json, summary.csv,
summary.parquet, runs.csv, runs.parquet).

Energy at the wall (``wall_energy_j`` = ``energy_j`` x PUE) and ``co2e_g`` (wall energy x grid
carbon intensity) are derived here from the factors recorded when the study ran (host.json),
and the factors themselves are written beside them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from llem_agent.contract import ExperimentResult, write_atomic

from .errors import ConfigError
from .manifest import Manifest
from .stats import ALL_METRICS, KEY_METRICS, METRIC_BY_NAME, METRICS, METRICS_KEY, describe
from .studydir import EXPERIMENTS_FILE, HOST_FILE, RunDir, StudyDir, newest_study, read_json
from .summary import ExperimentSummary, RunRecord, StudySummary, run_rows, summary_rows, write_summaries
from .userconfig import MeasurementFactors
from .words import be, plural

# A coefficient of variation above this makes a single experiment's mean doubtful.
CV_WARNING = 0.10
J_PER_KWH = 3.6e6


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


def write_design(study_dir: Path, design_hash: str, experiments: Iterable[tuple[int, str, dict[str, Any]]]) -> None:
    """``experiments.json``: every experiment's resolved config (index, config hash, config)."""
    design = {
        "study_design_hash": design_hash,
        "experiments": [{"index": i, "config_hash": h, "config": c} for i, h, c in experiments],
    }
    write_atomic(StudyDir(study_dir).design_file, json.dumps(design, indent=2))


def _experiment_configs(study: StudyDir, manifest: Manifest) -> dict[int, dict[str, Any]]:
    """Each experiment's config: ``experiments.json``, else any of its runs' ``experiment.json``."""
    configs: dict[int, dict[str, Any]] = {}
    design = study.design()
    if design is not None:
        for item in design.get("experiments", []):
            configs[int(item["index"])] = item["config"]
    for entry in manifest.runs:
        if entry.experiment_index not in configs:
            config = study.run(entry.run_id).request_config()
            if config is not None:
                configs[entry.experiment_index] = config
    return configs


def _factors(study: StudyDir, current: MeasurementFactors | None) -> MeasurementFactors:
    """The factors recorded when the study ran; a carbon intensity missing then comes from now."""
    host = study.host()
    recorded = host.get("measurement") if host is not None else None
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


def _extract(result: ExperimentResult) -> dict[str, Any]:
    """What aggregation needs from one result: its metrics, flags, energy caveat and window."""
    values: dict[str, float | None] = {}
    for metric in METRICS:
        value = metric.read(result)
        values[metric.name] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    start, length = result.timings.window_started_at, result.timings.measure_s
    return {
        "metrics": values,
        "flags": [f.code for f in result.energy.flags],
        "unavailable_reason": result.energy.unavailable_reason,
        "window": None if start is None else [start, start + length],
        "gpus_simulated": result.environment.gpus_simulated,
    }


def measured_windows(study_dir: Path, manifest: Manifest) -> dict[str, tuple[float, float]]:
    """When each completed run was measured (Unix times), from its result."""
    study = StudyDir(study_dir)
    out = {}
    for entry in manifest.runs:
        if entry.status == "completed":
            data = run_data(study.run(entry.run_id))
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


def run_data(run: RunDir) -> dict[str, Any] | None:
    """:func:`_extract` of the run's result (None where it has no usable one), through a small
    per-run cache.

    A result.json holds every request's token times and can be megabytes; parsing 1,000 of them
    would dominate `llem results`. The cache (``.metrics-cache.json``) is keyed by the result's
    size and mtime and by the metric list, so a re-run or a new llem version invalidates it.
    """
    try:
        st = run.result_file.stat()
    except OSError:
        return None
    key = f"{st.st_size}:{st.st_mtime_ns}:{METRICS_KEY}"
    cached = read_json(run.metrics_cache)
    if isinstance(cached, dict) and cached.get("key") == key:
        data: dict[str, Any] = cached["data"]
        return data
    result = run.read_result()[0]
    if result is None:
        return None
    data = _extract(result)
    tmp = run.path / f".{run.metrics_cache.name}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):  # a cache: no fsync, and a read-only study is fine
        tmp.write_text(json.dumps({"key": key, "data": data}), encoding="utf-8")
        os.replace(tmp, run.metrics_cache)
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
    study = StudyDir(study_dir)
    manifest, digest = study.manifest_and_digest()
    factors = _factors(study, current_factors)
    configs = _experiment_configs(study, manifest)
    indices = sorted({e.experiment_index for e in manifest.runs})
    params = {i: flatten(configs.get(i, {})) for i in indices}
    swept = varying_keys([params[i] for i in indices])
    records: list[RunRecord] = []
    unavailable: set[str] = set()
    windows: dict[str, tuple[float, float]] = {}  # when each completed run was measured
    simulated: dict[bool, list[str]] = {True: [], False: []}  # completed runs by whether their GPUs were
    for entry in manifest.runs:
        metrics: dict[str, float | None] = {m.name: None for m in ALL_METRICS}
        flags: list[str] = []
        reason = None
        status, kind = entry.status, entry.failure.kind if entry.failure else None
        message = entry.failure.message if entry.failure else None
        if entry.status == "completed":
            data = run_data(study.run(entry.run_id))
            if data is not None:
                if data.get("window"):
                    windows[entry.run_id] = (float(data["window"][0]), float(data["window"][1]))
                metrics = _run_metrics(data["metrics"], factors)
                flags = data["flags"]
                reason = data["unavailable_reason"]
                simulated[bool(data.get("gpus_simulated"))].append(entry.run_id)
                if reason:
                    unavailable.add(reason)
            else:
                lost = study.run(entry.run_id).result_file.name
                status, kind, message = "failed", "corrupt_result", f"{lost} missing or unreadable"
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
                gpus_simulated=entry.run_id in simulated[True],
            )
        )
    _refuse_mixed(study_dir, simulated)
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
        gpus_simulated=bool(simulated[True]),
    )


def _refuse_mixed(study_dir: Path, simulated: dict[bool, list[str]]) -> None:
    """A study whose runs were measured on real GPUs and simulated on simulated ones compares a
    simulator's numbers with measurements: refused, in one line."""
    fake, real = simulated[True], simulated[False]
    if fake and real:
        raise ConfigError(
            f"{study_dir}: {plural(len(fake), 'run')} on simulated GPUs ({_some(fake)}) and {len(real)} on real GPUs "
            f"or the CPU ({_some(real)}); llem never compares a simulated number with a measurement"
        )


def _some(run_ids: list[str]) -> str:
    """The first of ``run_ids``, with ``...`` where there are more."""
    return run_ids[0] + (", ..." if len(run_ids) > 1 else "")


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
        f"{plural(len(found), 'run')} {be(len(found), past=True)} measured while other runs were ({shown}{more}): "
        "they shared this host's power, memory bandwidth and cooling, so compare them with care (run with "
        "--parallel 1 to avoid it)"
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


def summarise(study_dir: Path, current_factors: MeasurementFactors | None = None) -> StudySummary:
    """Aggregate and write the summaries; a read-only study directory is summarised anyway."""
    summary = aggregate(study_dir, current_factors)
    with contextlib.suppress(OSError):
        write_summaries(summary)
    return summary


# EXPERIMENTS_FILE, HOST_FILE and newest_study are the study directory's (studydir.py),
# METRIC_BY_NAME the metrics' (stats.py), the summary's classes and writers summary.py's:
# named here too, for callers of old.
__all__ = [
    "CV_WARNING",
    "EXPERIMENTS_FILE",
    "HOST_FILE",
    "J_PER_KWH",
    "METRIC_BY_NAME",
    "ExperimentSummary",
    "RunRecord",
    "StudySummary",
    "aggregate",
    "experiment_label",
    "flatten",
    "measured_windows",
    "newest_study",
    "overlaps",
    "run_data",
    "run_rows",
    "summarise",
    "summary_rows",
    "varying_keys",
    "write_design",
    "write_summaries",
]
