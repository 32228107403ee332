"""Every metric column of `llem results`, of the report and of the summary files is tied to a
field of the result model: a field renamed in ExperimentResult fails here (and Metric.read
raises), never a column of blanks. The model is walked by its pydantic fields."""

from __future__ import annotations

import csv
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from llem.display import DEFAULT_COLUMNS
from llem.manifest import Manifest, RunEntry, RunFailure
from llem.report import EFFECT_METRICS, TABLE_METRICS
from llem.results import summarise
from llem.stats import ALL_METRICS, DERIVED, KEY_METRICS, METRIC_BY_NAME, METRICS, Metric, Stat
from llem_agent.contract import ExperimentConfig, ExperimentResult, ValidityFlag
from tests.factories import make_result
from tests.synthetic import make_study_dir

NUMBERS = {int, float, type(None)}
STATS = [f.name for f in dataclasses.fields(Stat)]
# The columns that are not metrics, each with the model field it comes from.
RUN_COLUMNS: dict[str, tuple[type[BaseModel], str]] = {
    "study_id": (Manifest, "study_id"),
    "run_id": (RunEntry, "run_id"),
    "experiment": (RunEntry, "experiment_index"),
    "cycle": (RunEntry, "cycle"),
    "config_hash": (RunEntry, "config_hash"),
    "engine": (ExperimentConfig, "engine"),
    "status": (RunEntry, "status"),
    "failure_kind": (RunFailure, "kind"),
    "failure_message": (RunFailure, "message"),
    "wall_s": (RunEntry, "wall_s"),
    "flags": (ExperimentResult, "energy.flags.code"),
}
EXPERIMENT_COLUMNS = {k: RUN_COLUMNS[k] for k in ("experiment", "config_hash", "engine")}
# Computed by results.py from the runs, not read from a model: the label, the run counts, warnings.
COMPUTED = {"label", "runs", "completed", "warnings"}


def _model(annotation: Any) -> type[BaseModel] | None:
    for part in _parts(annotation):
        if isinstance(part, type) and issubclass(part, BaseModel):
            return part
    return None


def _parts(annotation: Any) -> list[Any]:
    """An annotation's types, unions and lists unwrapped (``list[Flag] | None`` -> Flag, None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [p for arg in typing.get_args(annotation) for p in _parts(arg)]
    if origin is list:
        return _parts(typing.get_args(annotation)[0])
    return [annotation]


def field_type(model: type[BaseModel], path: str) -> Any:
    """The annotation of the field at dotted ``path`` of ``model``, walked by its pydantic fields;
    AssertionError naming the first part of ``path`` that is no field."""
    annotation: Any = model
    for key in path.split("."):
        current = _model(annotation)
        assert current is not None, f"{path}: '{key}' is below a field that is not a model ({annotation})"
        assert key in current.model_fields, f"{path}: {current.__name__} has no field '{key}'"
        annotation = current.model_fields[key].annotation
    return annotation


def _assert_numeric(path: str) -> None:
    kinds = set(_parts(field_type(ExperimentResult, path)))
    assert kinds <= NUMBERS, f"{path} is {kinds}, not a number"


@pytest.mark.parametrize("metric", ALL_METRICS, ids=lambda m: m.name)
def test_every_metric_reads_a_numeric_field_of_the_result(metric: Metric):
    _assert_numeric(metric.path)
    if metric.per is not None:
        _assert_numeric(metric.per)
    assert metric.derived == (metric in DERIVED)


def test_every_metric_is_read_from_a_real_result():
    result = make_result("e001-c1")
    for metric in METRICS:
        value = metric.read(result)
        assert value is None or isinstance(value, (int, float)), metric.name
    assert METRIC_BY_NAME["output_tokens_per_s"].read(result) == result.throughput.output_tokens_per_s
    assert METRIC_BY_NAME["ttft_p90_s"].read(result) == result.latency.ttft_s.p90
    assert METRIC_BY_NAME["energy_j"].read(result) is None  # measured nothing: a blank that is the result's


def test_a_path_that_names_no_field_fails_loudly():
    renamed = Metric("energy_j", "energy (J)", "lower", "energy.energy_joules")
    with pytest.raises(AttributeError):
        renamed.read(make_result("e001-c1"))
    with pytest.raises(AssertionError, match="EnergyReport has no field 'energy_joules'"):
        field_type(ExperimentResult, renamed.path)


def test_every_metric_column_shown_is_a_metric():
    shown = {
        "llem results (display.DEFAULT_COLUMNS)": [c[0] for c in DEFAULT_COLUMNS],
        "the report's experiments table": list(TABLE_METRICS),
        "the report's effect plots": [m[0] for m in EFFECT_METRICS],
        "the spread and ranking warnings": list(KEY_METRICS),
    }
    for where, names in shown.items():
        unknown = [n for n in names if n not in METRIC_BY_NAME]
        assert not unknown, f"{where}: {unknown} are not metrics (stats.METRICS)"
    assert len(METRIC_BY_NAME) == len(ALL_METRICS)  # no name given twice


def _assert_tied(column: str, known: dict[str, tuple[type[BaseModel], str]]) -> str:
    """Which kind of column it is; fails for one tied to nothing."""
    if column in known:
        model, path = known[column]
        field_type(model, path)
        return "bookkeeping"
    if column.startswith("param."):
        head = column.removeprefix("param.").split(".")[0]
        assert head in ExperimentConfig.model_fields, f"{column}: no such experiment config field"
        return "param"
    if column in COMPUTED:
        return "computed"
    if column in METRIC_BY_NAME:
        return "metric"
    of = [s for s in STATS if column.endswith(f"_{s}") and column.removesuffix(f"_{s}") in METRIC_BY_NAME]
    assert of, f"column {column!r} is tied to no field of the result model"
    return "statistic"


def _header(path: Path) -> list[str]:
    with path.open() as handle:
        return next(csv.reader(handle))


def test_every_column_of_the_summary_files_is_tied_to_a_field(tmp_path: Path):
    study = make_study_dir(tmp_path, batch_sizes=(1, 2), dtypes=("bfloat16",), n_cycles=2, failed_runs=1)
    summarise(study)
    per_run = _header(study / "runs.csv")
    per_experiment = _header(study / "summary.csv")
    assert per_run == pq.read_schema(study / "runs.parquet").names
    assert per_experiment == pq.read_schema(study / "summary.parquet").names
    kinds = {c: _assert_tied(c, RUN_COLUMNS) for c in per_run}
    assert [c for c in per_run if kinds[c] == "metric"] == [m.name for m in ALL_METRICS]
    assert "statistic" not in kinds.values()
    kinds = {c: _assert_tied(c, EXPERIMENT_COLUMNS) for c in per_experiment}
    statistics = [f"{m.name}_{s}" for m in ALL_METRICS for s in STATS]
    assert [c for c in per_experiment if kinds[c] == "statistic"] == statistics
    assert "metric" not in kinds.values()

    doc = json.loads((study / "summary.json").read_text())
    assert list(doc["metrics"]) == [m.name for m in ALL_METRICS]
    codes = set(typing.get_args(ValidityFlag.model_fields["code"].annotation))
    for exp in doc["experiments"]:
        for key in exp:
            if key in EXPERIMENT_COLUMNS:
                _assert_tied(key, EXPERIMENT_COLUMNS)
            else:
                assert key in COMPUTED | {"params", "flags", "metrics"}, key
        assert list(exp["metrics"]) == [m.name for m in ALL_METRICS]
        assert all(list(stat) == STATS for stat in exp["metrics"].values())
        assert set(exp["flags"]) <= codes
        assert all(_assert_tied(f"param.{k}", {}) == "param" for k in exp["params"])
    failure = {"run_id": (RunEntry, "run_id"), "status": (RunEntry, "status"), "kind": (RunFailure, "kind"),
               "message": (RunFailure, "message")}  # fmt: skip
    assert doc["not_completed"]
    for item in doc["not_completed"]:
        assert all(_assert_tied(key, failure) == "bookkeeping" for key in item)
