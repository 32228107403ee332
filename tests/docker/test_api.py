"""The Python API through real containers: ``llem.run_study`` runs a study given as a mapping,
``llem.load_study`` reads the same study back, ``llem.run_experiment`` returns one typed result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import llem
from llem_agent.contract import ExperimentConfig, ExperimentResult


class Recorder:
    """Only some of the events: the API calls those an object has and no others."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def study_started(self, plan: Any, study_dir: Path, completed: int, resumed: bool) -> None:
        self.seen.append(("study_started", (len(plan.runs), completed, resumed)))

    def run_started(self, run: Any, position: int, total: int) -> None:
        self.seen.append(("run_started", (run.run_id, position, total)))

    def run_finished(self, outcome: Any) -> None:
        self.seen.append(("run_finished", (outcome.entry.run_id, outcome.entry.status)))


def study_mapping(model: str) -> dict[str, Any]:
    return {
        "name": "api",
        "model": model,
        "engine": "pytorch",
        "max_input_tokens": 16,
        "max_output_tokens": 8,
        "dataset": {"source": "builtin", "n_prompts": 4},
        "decoder": {"do_sample": False},
        "warmup": {"n_warmup": 1},
        "study_execution": {"n_cycles": 2, "experiment_order": "sequential"},
    }


def options(tmp_path: Path) -> llem.Options:
    return llem.Options(results_dir=tmp_path / "results", lock_dir=tmp_path / "locks")


def test_run_study_from_a_mapping_then_load_study(tmp_path, tiny_model, docker_client, monkeypatch):
    # A mapping's relative paths start from the caller's directory (there is no study file).
    monkeypatch.chdir(tiny_model.parent)
    events = Recorder()
    study = llem.run_study(study_mapping(f"./{tiny_model.name}"), options(tmp_path), events=events)

    assert isinstance(study, llem.StudyResults)
    assert study.status == "completed" and study.name == "api"
    assert [(r.run_id, r.status) for r in study.runs] == [("e001-c1", "completed"), ("e001-c2", "completed")]
    assert events.seen == [
        ("study_started", (2, 0, False)),
        ("run_started", ("e001-c1", 1, 2)),
        ("run_finished", ("e001-c1", "completed")),
        ("run_started", ("e001-c2", 2, 2)),
        ("run_finished", ("e001-c2", "completed")),
    ]
    # Typed results, the very ones on disk.
    for run in study.runs:
        assert isinstance(run.result, ExperimentResult)
        on_disk = json.loads((study.directory / "runs" / run.run_id / "result.json").read_text())
        assert run.result.throughput.output_tokens_per_s == on_disk["throughput"]["output_tokens_per_s"] > 0
        assert run.result.n_requests == 4  # the four prompts measured
    # The study directory keeps the mapping as its study file, and the model it found.
    assert "max_output_tokens: 8" in (study.directory / "study.yaml").read_text()
    # The runs as a table: one row per run, its metrics the results'.
    rows = study.table()
    assert [row["run_id"] for row in rows] == ["e001-c1", "e001-c2"]
    for row, run in zip(rows, study.runs, strict=True):
        assert run.result is not None
        assert row["output_tokens_per_s"] == pytest.approx(run.result.throughput.output_tokens_per_s)
    # The statistics across cycles: the mean of the two runs' throughput.
    (experiment,) = study.summary.experiments
    mean = sum(r.result.throughput.output_tokens_per_s for r in study.runs if r.result) / 2
    assert experiment.stats["output_tokens_per_s"].mean == pytest.approx(mean)

    again = llem.load_study(study.directory)
    assert again.status == "completed" and again.directory == study.directory
    assert [r.result for r in again.runs] == [r.result for r in study.runs]
    assert again.table() == rows


def test_run_experiment_returns_one_typed_result(tmp_path, tiny_model, docker_client):
    fields = {k: v for k, v in study_mapping(str(tiny_model)).items() if k not in ("name", "study_execution")}
    config = ExperimentConfig.model_validate(fields)
    result = llem.run_experiment(config, options(tmp_path))
    assert isinstance(result, ExperimentResult)
    assert result.run_id == "e001-c1" and result.n_requests == 4  # one cycle: run e001-c1 only
    assert result.throughput.output_tokens_per_s > 0


def test_errors_are_llems_own_and_nothing_is_written(tmp_path, docker_client):
    with pytest.raises(llem.ConfigError, match="model directory not found") as caught:
        llem.run_study(study_mapping(str(tmp_path / "nowhere")), options(tmp_path))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "results").exists()


def test_the_api_example_runs(tmp_path, tiny_model, docker_client):
    """examples/api_study.py, as its docstring says to run it."""
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "api_study.py"), str(tmp_path / "results")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    assert sum(": completed" in line for line in lines) == 5  # four runs, then the study
    assert any(line.startswith("quickstart: completed, 4 results in ") for line in lines)
    assert sum("tok/s over 2 cycles" in line for line in lines) == 2
    assert lines[-1].startswith("fastest run: e00")
