"""The GPU path through a real container on a simulated GPU (llem run --simulate-gpus 1): the
idle baseline, the thermal floor's loaded idle, the counter and trace energies, J/token, the
flags, timeseries.parquet, the summary files, llem results and the report, each checked against
the simulator's ground truth (simulation.json) and labelled as simulated.

The image is the one a study would use (``make images``; LLEM_IMAGE_PYTORCH points elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llem_agent.contract.simulation import simulated_uuid
from tests.helpers import run_llem

STUDY = """
name: simulated
model: {model}
engine: transformers
max_input_tokens: 24
max_output_tokens: 32
dataset: {{source: builtin, n_prompts: 160}}
decoder: {{do_sample: false}}
warmup: {{n_warmup: 2, thermal_floor_seconds: 30}}
baseline: {{strategy: fresh, duration_seconds: 5}}
study_execution: {{n_cycles: 1}}
"""


def test_a_study_on_a_simulated_gpu_reports_the_simulators_truth(tmp_path: Path, tiny_model: Path, docker_client):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(model=tiny_model))
    env = {"HF_HOME": str(tmp_path / "hf"), "LLEM_BASELINE_CACHE": str(tmp_path / "baselines")}
    results = tmp_path / "results"
    args = ["--results-dir", str(results), "--lock-dir", str(tmp_path / "locks"), "--simulate-gpus", "1"]
    proc = run_llem("run", str(study), *args, env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "1/1 runs completed" in proc.stdout and "SIMULATED GPUs" in proc.stdout

    (study_dir,) = results.iterdir()
    run_dir = study_dir / "runs" / "e001-c1"
    result = json.loads((run_dir / "result.json").read_text())
    book = json.loads((run_dir / "simulation.json").read_text())
    truth = book["truth"]
    assert book["simulated"] is True and truth is not None

    # Labelled: the result, its GPU, host.json, the manifest's device.
    environment = result["environment"]
    assert environment["gpus_simulated"] is True and environment["device"] == "cpu"
    (gpu,) = environment["gpus"]
    assert gpu["uuid"] == simulated_uuid(0) and gpu["name"] == "llem simulated GPU (H100-like)"
    assert gpu["driver_version"] == "simulated"
    host = json.loads((study_dir / "host.json").read_text())
    assert host["gpus_simulated"] is True and host["gpus"][0]["simulated"] is True
    assert json.loads((study_dir / "manifest.json").read_text())["runs"][0]["devices"] == ["gpu-sim0"]

    # The energy against the ground truth: the counter within its step (and, read on its steps,
    # within the harness's own uncertainty), the trace within the averaged readings' edge.
    energy = result["energy"]
    assert energy["source"] == "nvml_total_energy" and energy["energy_j"] is not None
    step_j = truth["peak_power_w"] * truth["counter_step_s"]
    assert energy["energy_j"] == pytest.approx(truth["energy_j"], abs=step_j)
    assert energy["energy_j"] == pytest.approx(truth["counter_energy_j"], abs=energy["energy_uncertainty_j"])
    swing = book["profile"]["load_w"] - book["profile"]["loaded_idle_w"]
    assert energy["trace_energy_j"] == pytest.approx(truth["energy_j"], abs=swing / 4 + step_j)
    assert energy["j_per_output_token"] == pytest.approx(
        truth["j_per_output_token"], abs=step_j / result["output_tokens"]
    )
    # The idle baseline before the model loaded, the loaded idle of the thermal floor after it.
    baseline = energy["baseline"]
    assert baseline["power_w"] == pytest.approx(truth["idle_power_w"], rel=1e-6)
    assert baseline["loaded_power_w"] == pytest.approx(truth["loaded_idle_power_w"], rel=1e-6)
    assert baseline["adjusted_with"] == "post_load"
    assert energy["adjusted_energy_j"] == pytest.approx(truth["adjusted_energy_j"], abs=step_j)
    assert result["warmup"]["thermal_floor_s"] == 30.0
    # No fault, no flag (a window under 5 s is said as such).
    flags = {f["code"] for f in energy["flags"]}
    assert flags == ({"short_window"} if result["timings"]["measure_s"] < 5.0 else set())

    # The 1 Hz trace of the window, and energy in the summary files and llem results.
    table = pq.read_table(run_dir / "timeseries.parquet").to_pydict()
    assert len(table["power_w"]) >= 2
    assert all(book["profile"]["idle_w"] <= p <= book["profile"]["load_w"] + 1e-6 for p in table["power_w"])
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["gpus_simulated"] is True and summary["energy_unavailable_reason"] is None
    assert summary["experiments"][0]["metrics"]["energy_j"]["mean"] == pytest.approx(energy["energy_j"])
    shown = run_llem("results", str(study_dir))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("SIMULATED GPUs") and "J/out tok" in shown.stdout and "power W" in shown.stdout
    report = run_llem("report", str(study_dir))
    assert report.returncode == 0, report.stderr
    assert "(SIMULATED GPUs)" in (study_dir / "report.html").read_text()
