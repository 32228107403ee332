"""A study's summary (:class:`StudySummary`: its experiments' statistics and its runs, as
results.py aggregates them) and the files it is written to (by ``llem results`` and at the end
of a study):

- ``runs.csv`` / ``runs.parquet``: one row per run (every run, failed and skipped included),
  its parameters, status and every metric: the long table to load into pandas.
- ``summary.json``, ``summary.csv``, ``summary.parquet``: one row per experiment with, for each
  metric, the mean, standard deviation, coefficient of variation, 95% confidence interval
  (Student's t) and n over its completed cycles, plus warnings where the spread is too wide to
  rank configurations.

Every metric column is one of :data:`stats.ALL_METRICS`, each read from a field of the result model.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llem_agent.contract import ExperimentResult, RunError, write_atomic

from . import __version__
from .manifestmodel import Manifest
from .stats import ALL_METRICS, Stat
from .studydir import StudyDir
from .userconfig import MeasurementFactors

SUMMARY_SCHEMA_VERSION = "1"
# What every table and report of a study on simulated GPUs says first.
SIMULATED_BANNER = (
    "SIMULATED GPUs (--simulate-gpus): every GPU energy, power and temperature figure is a simulator's, "
    "not a measurement"
)


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
    gpus_simulated: bool = False  # its GPUs were simulated (--simulate-gpus): its GPU figures are not measured


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
    gpus_simulated: bool = False  # every completed run's GPUs were simulated (a study never mixes them)

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
            "gpus_simulated": self.gpus_simulated,
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
            "skipped_grid_points": [{"index": s.index + 1, "point": s.point, "reason": s.reason} for s in m.skipped],
        }


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
        if summary.gpus_simulated:
            row["gpus_simulated"] = r.gpus_simulated
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
        if summary.gpus_simulated:
            row["gpus_simulated"] = True
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


# What writing a study's summary imports: pyarrow and its parquet writer, and numpy, which
# pyarrow imports (about 0.1 s here). Imported in the background while the first run's agent
# starts, they are no longer on the path from the last container's exit to llem's exit; nor is
# building the result models, which reading a run's result.json or error.json needs.
SUMMARY_MODULES = ("numpy", "pyarrow", "pyarrow.parquet")
_prefetched: list[threading.Thread] = []


def prefetch_summary_modules() -> None:
    """Import :data:`SUMMARY_MODULES` in a daemon thread, once per process. Called as a run
    starts, when this process only waits on it; the measured window comes seconds later, so the
    imports never share the CPU with it. A failure here is the summary's to report, not this."""
    if _prefetched:
        return

    def load() -> None:
        for name in SUMMARY_MODULES:
            with contextlib.suppress(Exception):  # the summary imports it again and says why
                importlib.import_module(name)
        for model in (ExperimentResult, RunError):  # built at first use (defer_build): now, not after the run
            model.model_rebuild()

    thread = threading.Thread(target=load, name="llem-prefetch", daemon=True)
    _prefetched.append(thread)
    thread.start()


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(rows[0]) if rows else []
    # Mixed-type parameter columns (1 and "auto") become text so one column has one type.
    data: dict[str, list[Any]] = {c: [row.get(c) for row in rows] for c in columns}
    arrays = {}
    for name, values in data.items():
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            arrays[name] = _arrow_array(pa, [None if v is None else str(v) for v in values], {str})
        else:
            arrays[name] = _arrow_array(pa, values, kinds)
    table = pa.table(arrays)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


# The Arrow type of a column by the Python types in it, as pyarrow infers it. Said, so that pyarrow
# need not infer it: its inference tries to import dateutil for every column (a failed import, a
# search of sys.path each time: ~0.07 s of a study's summary where dateutil is not installed).
_ARROW_TYPES: dict[frozenset[type], str] = {
    frozenset(): "null",
    frozenset({bool}): "bool_",
    frozenset({int}): "int64",
    frozenset({float}): "float64",
    frozenset({int, float}): "float64",
    frozenset({str}): "string",
}


def _arrow_array(pa: Any, values: list[Any], kinds: set[type]) -> Any:
    """``values`` as an Arrow array of the type pyarrow would infer; inferred where it is no
    type of :data:`_ARROW_TYPES` or does not fit it (an int beyond int64)."""
    kind = _ARROW_TYPES.get(frozenset(kinds))
    if kind is not None:
        with contextlib.suppress(OverflowError, pa.ArrowException):
            return pa.array(values, type=getattr(pa, kind)())
    return pa.array(values)


def write_summaries(summary: StudySummary) -> list[Path]:
    """Write the five files into the study directory (each atomically); return their paths."""
    summary_json, summary_csv, summary_parquet, runs_csv, runs_parquet = StudyDir(summary.study_dir).summary_files
    runs, per_exp = run_rows(summary), summary_rows(summary)
    write_atomic(summary_json, json.dumps(summary.as_json(), indent=2, allow_nan=False))
    write_atomic(summary_csv, _csv_text(per_exp))
    write_atomic(runs_csv, _csv_text(runs))
    _write_parquet(per_exp, summary_parquet)
    _write_parquet(runs, runs_parquet)
    return [summary_json, summary_csv, summary_parquet, runs_csv, runs_parquet]
