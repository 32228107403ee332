"""Statistics across cycles and the summary files, on synthetic study directories."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llem.report import pareto_front
from llem.results import (
    EXPERIMENTS_FILE,
    HOST_FILE,
    ExperimentSummary,
    _ranking_warnings,
    aggregate,
    summarise,
)
from llem.stats import Stat, describe, format_mean_ci
from llem.userconfig import MeasurementFactors
from llem_agent.contract import RESULT_FILE
from tests.synthetic import make_study_dir

T_975_DF2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (tables)


def test_describe_matches_the_textbook_interval():
    stat = describe([1.0, 2.0, 3.0])
    assert stat.n == 3 and stat.mean == 2.0 and stat.std == pytest.approx(1.0)
    assert stat.cv == pytest.approx(0.5)
    half = T_975_DF2 / math.sqrt(3)
    assert stat.ci95_low == pytest.approx(2.0 - half) and stat.ci95_high == pytest.approx(2.0 + half)


def test_describe_small_and_dirty_samples():
    assert describe([]) == Stat(n=0, mean=None)
    assert describe([None, float("nan")]) == Stat(n=0, mean=None)
    one = describe([5.0, None])
    assert one.n == 1 and one.mean == 5.0 and one.std is None and one.ci95_low is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=2, max_size=50))
def test_interval_contains_the_mean_and_widens_with_spread(values):
    stat = describe(values)
    assert stat.ci95_low is not None and stat.ci95_high is not None and stat.mean is not None
    assert stat.ci95_low <= stat.mean + 1e-6 * (1 + abs(stat.mean)) and stat.mean <= stat.ci95_high + 1e-6 * (
        1 + abs(stat.mean)
    )
    assert stat.std == pytest.approx(float(np.std(values, ddof=1)), rel=1e-9, abs=1e-9)
    # Twice the spread about the same mean, twice the interval (Student's t for the same n).
    wider = describe([stat.mean + 2 * (v - stat.mean) for v in values])
    assert wider.ci95_low is not None and wider.ci95_high is not None
    width = stat.ci95_high - stat.ci95_low
    assert wider.ci95_high - wider.ci95_low == pytest.approx(2 * width, rel=1e-6, abs=1e-6)


def test_aggregate_matches_the_runs(tmp_path: Path):
    study = make_study_dir(tmp_path, batch_sizes=(1, 4), dtypes=("bfloat16",), n_cycles=3, failed_runs=1)
    summary = aggregate(study)
    assert summary.swept == ["pytorch.batch_size"]
    assert [e.runs for e in summary.experiments] == [3, 3]
    assert sum(e.completed for e in summary.experiments) == 5
    failed = [r for r in summary.runs if r.status != "completed"]
    assert len(failed) == 1 and failed[0].failure_kind == "oom"
    for e in summary.experiments:
        values = [
            json.loads((study / "runs" / r.run_id / RESULT_FILE).read_text())["energy"]["j_per_output_token"]
            for r in summary.runs
            if r.experiment == e.index and r.status == "completed"
        ]
        assert e.stats["j_per_output_token"].n == len(values)
        assert e.stats["j_per_output_token"].mean == pytest.approx(float(np.mean(values)))


def test_wall_energy_and_co2e_use_the_recorded_factors(tmp_path: Path):
    study = make_study_dir(tmp_path, batch_sizes=(1,), dtypes=("bfloat16",), n_cycles=2, failed_runs=0)
    summary = aggregate(study, MeasurementFactors(datacenter_pue=3.0, carbon_intensity_gco2_kwh=1.0))
    assert summary.factors.datacenter_pue == 1.2  # recorded in host.json when the study ran
    for run in summary.runs:
        energy = run.metrics["energy_j"]
        assert energy is not None
        assert run.metrics["wall_energy_j"] == pytest.approx(energy * 1.2)
        assert run.metrics["co2e_g"] == pytest.approx(energy * 1.2 / 3.6e6 * 300.0)


def test_missing_carbon_intensity_is_filled_from_now_and_says_so(tmp_path: Path):
    study = make_study_dir(tmp_path, batch_sizes=(1,), dtypes=("bfloat16",), n_cycles=2, carbon_intensity=None)
    assert aggregate(study).runs[0].metrics["co2e_g"] is None
    current = MeasurementFactors(carbon_intensity_gco2_kwh=400.0, sources={"carbon_intensity_gco2_kwh": "env X"})
    summary = aggregate(study, current)
    assert summary.factors.carbon_intensity_gco2_kwh == 400.0
    assert summary.factors.sources["carbon_intensity_gco2_kwh"] == "env X (applied after the run)"
    assert summary.factors.datacenter_pue == 1.2


def test_summary_files_round_trip(tmp_path: Path):
    study = make_study_dir(tmp_path, n_cycles=2)
    summary = summarise(study)
    data = json.loads((study / "summary.json").read_text())
    assert [e["experiment"] for e in data["experiments"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert data["factors"]["datacenter_pue"] == 1.2
    assert data["not_completed"][0]["kind"] == "oom"
    assert data["skipped_grid_points"] == [{"index": 100, "point": "", "reason": "synthetic: an invalid grid point"}]
    per_exp = pq.read_table(study / "summary.parquet").to_pylist()
    assert len(per_exp) == 8
    first = per_exp[0]
    assert first["output_tokens_per_s_mean"] == pytest.approx(summary.experiments[0].stats["output_tokens_per_s"].mean)
    runs = list(csv.DictReader((study / "runs.csv").open()))
    assert len(runs) == 16 and {r["status"] for r in runs} == {"completed", "failed"}
    assert pq.read_table(study / "runs.parquet").num_rows == 16
    assert "param.pytorch.batch_size" in runs[0] and "param.dtype" in runs[0]
    with (study / "summary.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 8


def test_a_corrupt_result_is_reported_not_counted(tmp_path: Path):
    study = make_study_dir(tmp_path, batch_sizes=(1,), dtypes=("bfloat16",), n_cycles=3, failed_runs=0)
    (study / "runs" / "e001-c2" / RESULT_FILE).write_text("{torn")
    summary = aggregate(study)
    assert summary.experiments[0].completed == 2
    bad = next(r for r in summary.runs if r.run_id == "e001-c2")
    assert bad.status == "failed" and bad.failure_kind == "corrupt_result"


def test_a_study_without_experiments_json_reads_each_runs_request(tmp_path: Path):
    study = make_study_dir(tmp_path, batch_sizes=(1, 2), dtypes=("bfloat16",), n_cycles=1, failed_runs=0)
    (study / EXPERIMENTS_FILE).unlink()
    (study / HOST_FILE).unlink()
    summary = aggregate(study)
    assert [e.params["pytorch.batch_size"] for e in summary.experiments] == [1, 2]
    assert summary.factors.datacenter_pue == 1.0


def _exp(index: int, mean: float, half: float) -> ExperimentSummary:
    stat = Stat(n=3, mean=mean, std=1.0, cv=0.1, ci95_low=mean - half, ci95_high=mean + half)
    return ExperimentSummary(index, "h", "pytorch", "x", {}, 3, 3, dict.fromkeys(
        ("output_tokens_per_s", "j_per_output_token", "e2e_p50_s"), stat), {})  # fmt: skip


def test_ranking_warning_only_where_intervals_overlap():
    assert _ranking_warnings([_exp(1, 10.0, 1.0), _exp(2, 20.0, 1.0)]) == []
    warnings = _ranking_warnings([_exp(1, 10.0, 6.0), _exp(2, 20.0, 6.0)])
    assert len(warnings) == 3 and "experiments 1 and 2" in warnings[0]


def test_pareto_front():
    points = [(1.0, 1.0), (2.0, 2.0), (3.0, 0.5), (0.5, 0.4), (3.0, 0.6)]
    assert pareto_front(points) == [3, 2]
    assert pareto_front([]) == []


@pytest.mark.parametrize(
    ("mean", "half", "text"),
    [(1536.2, 127.4, "1,536 ± 127"), (0.20031, 0.03026, "0.2003 ± 0.0303"), (None, None, "–"), (5.0, None, "5.000")],
)
def test_format_mean_ci(mean, half, text):
    assert format_mean_ci(mean, half) == text


def test_metrics_cache_follows_the_result_file(tmp_path: Path):
    study = make_study_dir(tmp_path, batch_sizes=(1,), dtypes=("bfloat16",), n_cycles=1, failed_runs=0)
    run_dir = study / "runs" / "e001-c1"
    first = aggregate(study).runs[0].metrics["output_tokens_per_s"]
    assert (run_dir / ".metrics-cache.json").exists()
    result = json.loads((run_dir / RESULT_FILE).read_text())
    result["throughput"]["output_tokens_per_s"] = 12345.0  # e.g. a re-run replaced the result
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    assert first != 12345.0
    assert aggregate(study).runs[0].metrics["output_tokens_per_s"] == 12345.0


def test_a_label_leaves_out_the_parameters_of_another_engines_section():
    from llem.results import experiment_label

    swept = ["engine", "pytorch.batch_size", "vllm.engine.max_num_seqs"]
    # was: "pytorch pytorch.batch_size=4 vllm.engine.max_num_seqs=None"
    assert experiment_label({"pytorch.batch_size": 4}, swept, "pytorch") == "pytorch pytorch.batch_size=4"
    assert experiment_label({"vllm.engine.max_num_seqs": 8}, swept, "vllm") == "vllm vllm.engine.max_num_seqs=8"
    assert experiment_label({"dtype": "float16"}, ["dtype"], "vllm") == "dtype=float16"
