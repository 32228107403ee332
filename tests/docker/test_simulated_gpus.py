"""The GPU path through a real container on a simulated GPU (llem run --simulate-gpus 1): the
idle baseline, the thermal floor's loaded idle, the counter and trace energies, J/token, the
flags, timeseries.parquet, the summary files, llem results and the report, each checked against
the simulator's ground truth (simulation.json) and labelled as simulated. Then the rest of the
GPU path: two --parallel slots on two simulated GPUs, each fault's flags, a GPU lost mid-run, the
validated baseline cache across studies, and a recorded trace played back (trace=PATH).

The image is the one a study would use (``make images``; LLEM_IMAGE_PYTORCH points elsewhere)."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llem.errors import EXIT_RUNS_FAILED
from llem_agent.contract.simulation import simulated_uuid
from tests.conftest import REPO
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


# --- the rest of the GPU path on simulated GPUs: slots, faults, a lost GPU, the baseline cache ----

SMALL = """
name: {name}
model: {model}
engine: transformers
max_input_tokens: 16
max_output_tokens: {tokens}
dataset: {{source: builtin, n_prompts: {prompts}}}
decoder: {{do_sample: false, min_new_tokens: {tokens}}}
warmup: {{n_warmup: 1, thermal_floor_seconds: 30}}
baseline: {baseline}
study_execution: {{n_cycles: {cycles}, experiment_order: sequential, config_gap_seconds: 0, cycle_gap_seconds: 0}}
"""
FRESH = "{strategy: fresh, duration_seconds: 5}"


def small_study(tmp_path: Path, model: Path, name: str, *, prompts: int = 8, tokens: int = 8, cycles: int = 1,
                baseline: str = FRESH, extra: str = "") -> Path:  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    text = SMALL.format(name=name, model=model, prompts=prompts, tokens=tokens, cycles=cycles, baseline=baseline)
    path.write_text(text + extra)
    return path


def llem_args(study: Path, where: Path, spec: str, *extra: str) -> list[str]:
    return ["run", str(study), "--results-dir", str(where / "results"), "--lock-dir", str(where / "locks"),
            "--simulate-gpus", spec, *extra]  # fmt: skip


def only_study(where: Path) -> Path:
    (study_dir,) = (where / "results").iterdir()
    return study_dir


def result_of(study_dir: Path, run_id: str) -> dict:
    return json.loads((study_dir / "runs" / run_id / "result.json").read_text())


def test_two_slots_on_two_simulated_gpus_each_run_on_its_own_gpu(tmp_path: Path, tiny_model: Path, docker_client):
    # Windows of a few seconds: the two slots reach theirs together (the same baseline and floor).
    study = small_study(tmp_path, tiny_model, "slots", prompts=120, tokens=32, cycles=2,
                        extra="sweep:\n  pytorch.batch_size: [1, 2]\n")  # fmt: skip
    env = {"HF_HOME": str(tmp_path / "hf"), "LLEM_BASELINE_CACHE": str(tmp_path / "baselines")}
    done = run_llem(*llem_args(study, tmp_path, "2", "--parallel", "2"), env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    study_dir = only_study(tmp_path)
    entries = {r["run_id"]: r for r in json.loads((study_dir / "manifest.json").read_text())["runs"]}
    assert len(entries) == 4 and {e["status"] for e in entries.values()} == {"completed"}
    uuid_of = {"gpu-sim0": simulated_uuid(0), "gpu-sim1": simulated_uuid(1)}
    spans: dict[str, list[tuple[datetime, datetime, str]]] = {}
    windows = {}
    for run_id, entry in entries.items():
        (device,) = entry["devices"]  # one GPU per run, and the one it was measured on
        result = result_of(study_dir, run_id)
        assert [g["uuid"] for g in result["environment"]["gpus"]] == [uuid_of[device]]
        assert result["environment"]["gpus_simulated"] is True
        started, finished = (
            datetime.fromisoformat(entry[k].replace("Z", "+00:00")) for k in ("started_at", "finished_at")
        )
        spans.setdefault(device, []).append((started, finished, run_id))
        begin = result["timings"]["window_started_at"]
        windows[run_id] = (begin, begin + result["timings"]["measure_s"])
    assert set(spans) == {"gpu-sim0", "gpu-sim1"}  # both slots measured
    for device, runs in spans.items():  # never two runs on one GPU at once
        runs.sort()
        for (_, end, a), (begin, _, b) in itertools.pairwise(runs):
            assert end <= begin, f"{a} and {b} overlapped on {device}"
    # What each manifest entry says overlapped it is what the windows say, both ways.
    for run_id, (begin, end) in windows.items():
        others = {o for o, (b, e) in windows.items() if o != run_id and b < end and begin < e}
        assert set(entries[run_id]["overlapped_with"]) == others
    assert any(entries[r]["overlapped_with"] for r in entries)  # two slots did measure side by side
    assert len(list((study_dir / "workers").glob("slot*.log"))) == 2


# Each study injects faults whose flags cannot mask one another, with the flags it must raise and
# the energy source it must report (README's table; tests/unit/test_simulated_nvml.py has each alone).
FAULT_STUDIES = {
    "reset": ("1,reading=instant,fault=counter_reset@0.2,fault=sampling_gap:0.5@0.2",
              {"counter_reset", "sampling_gap"}, "nvml_power_trace"),
    "thermal": ("1,reading=instant,fault=throttling@0.2,fault=temperature_drift:3,fault=unsupported:energy",
                {"throttled", "temperature_drift"}, "nvml_power_trace"),
    "bias": ("1,reading=instant,fault=counter_bias:0.2", {"counter_trace_disagree"}, "nvml_total_energy"),
}  # fmt: skip


@pytest.mark.parametrize("name", FAULT_STUDIES)
def test_each_simulated_fault_raises_its_flag_through_a_container(name: str, tmp_path: Path, tiny_model: Path,
                                                                   docker_client):  # fmt: skip
    # One study at a time: side by side on two cores, the engines starve the sampler thread into a
    # real sampling gap. The fault-free study above stays quiet.
    spec, flags, source = FAULT_STUDIES[name]
    # A window of several seconds: the temperature's slope needs three of its 1 Hz readings in it.
    study = small_study(tmp_path, tiny_model, name, prompts=200, tokens=48)
    done = run_llem(*llem_args(study, tmp_path, spec), env={"HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == 0, done.stderr + done.stdout
    study_dir = only_study(tmp_path)
    result = result_of(study_dir, "e001-c1")
    energy = result["energy"]
    short = {"short_window"} if result["timings"]["measure_s"] < 5.0 else set()
    assert {f["code"] for f in energy["flags"]} == flags | short, energy["flags"]
    assert energy["source"] == source
    book = json.loads((study_dir / "runs" / "e001-c1" / "simulation.json").read_text())
    assert all(f["armed_s"] is not None for f in book["faults"])  # each fault did set in
    if name == "bias":  # the counter over-counts by 20 %: the truth between its steps, x 1.2
        assert energy["energy_j"] == pytest.approx(book["truth"]["counter_energy_j"] * 1.2, rel=1e-3)
    else:  # no counter to trust: the trace is the energy
        assert energy["energy_j"] == pytest.approx(energy["trace_energy_j"])


def test_a_gpu_lost_mid_run_fails_that_run_in_one_line_and_nothing_else(tmp_path: Path, tiny_model: Path,
                                                                        docker_client):  # fmt: skip
    # The GPU falls off the bus 1 s after a window's first batch: the first run's window (2 prompts
    # of 8 tokens) ends long before, the second's (200 prompts of 64 tokens, one at a time) does not.
    extra = (
        "experiments:\n  - dataset: {source: builtin, n_prompts: 2}\n"
        "  - {dataset: {source: builtin, n_prompts: 200}, max_output_tokens: 64,"
        " decoder: {do_sample: false, min_new_tokens: 64}}\n"
    )
    study = small_study(tmp_path, tiny_model, "lost", extra=extra)
    done = run_llem(*llem_args(study, tmp_path, "1,fault=device_lost@1"), env={"HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == EXIT_RUNS_FAILED, done.stderr + done.stdout
    study_dir = only_study(tmp_path)
    doc = json.loads((study_dir / "manifest.json").read_text())
    first, second = doc["runs"]
    assert (first["status"], second["status"]) == ("completed", "failed")
    said = "measure: GPU 0 (llem simulated GPU (H100-like)) is lost: it fell off the bus (simulated fault)"
    assert second["failure"] == {"kind": "device_lost", "type": "DeviceLost", "message": said}
    shown = [line for line in (done.stdout + done.stderr).splitlines() if "is lost" in line]
    assert shown == [f"failed e002-c1: device_lost: {said}", f"  ✗ e002-c1  {said}"]  # as it fails, and in the end
    assert "Traceback" not in done.stdout + done.stderr
    result = result_of(study_dir, first["run_id"])  # the completed run is whole
    assert result["output_tokens"] > 0 and result["energy"]["energy_j"] is not None
    assert not (study_dir / "runs" / second["run_id"] / "result.json").exists()
    assert doc["status"] == "failed"


def test_the_validated_baseline_is_cached_spot_checked_and_remeasured_on_drift(tmp_path: Path, tiny_model: Path,
                                                                               docker_client):  # fmt: skip
    # Three studies share one baseline cache: the first measures the idle power (70 W, the profile's
    # default), the second reuses it after a spot check (every use checks: validation_interval 1),
    # the third runs on GPUs idling at 90 W, 28.6 % off the cached 70 W (> drift_threshold 10 %).
    baseline = "{strategy: validated, duration_seconds: 5, validation_interval: 1, drift_threshold: 0.1}"
    env = {"HF_HOME": str(tmp_path / "hf"), "LLEM_BASELINE_CACHE": str(tmp_path / "baselines")}
    seen = []
    for name, spec in (("first", "1"), ("second", "1"), ("third", "1,idle=90")):
        study = small_study(tmp_path, tiny_model, name, baseline=baseline)
        done = run_llem(*llem_args(study, tmp_path / name, spec), env=env)
        assert done.returncode == 0, done.stderr + done.stdout
        seen.append(result_of(only_study(tmp_path / name), "e001-c1")["energy"]["baseline"])
    first, second, third = seen
    assert [b["source"] for b in seen] == ["measured", "cache_validated", "remeasured_after_drift"]
    assert first["power_w"] == pytest.approx([70.0]) and second["power_w"] == pytest.approx([70.0])
    assert second["measured_at"] == first["measured_at"]  # the first study's measurement, reused
    assert third["power_w"] == pytest.approx([90.0]) and third["measured_at"] > second["measured_at"]
    cached = json.loads((tmp_path / "baselines" / "baselines.json").read_text())
    assert cached[simulated_uuid(0)]["power_w"] == pytest.approx([90.0])  # the cache now holds the new idle


def trapezoid_j(points: list[tuple[float, float]], start_s: float, end_s: float) -> float:
    """The integral of the readings, linear between them, from ``start_s`` to ``end_s``."""

    def at(t: float) -> float:
        for (t0, p0), (t1, p1) in itertools.pairwise(points):
            if t0 <= t <= t1:
                return p0 + (p1 - p0) * (t - t0) / (t1 - t0)
        return points[-1][1] if t > points[-1][0] else points[0][1]

    knots = [start_s, *(t for t, _ in points if start_s < t < end_s), end_s]
    return sum((b - a) * (at(a) + at(b)) / 2 for a, b in itertools.pairwise(knots))


def test_a_recorded_trace_drives_a_simulated_gpu_through_a_container(tmp_path: Path, tiny_model: Path, docker_client):
    # The trace `make gpu-check` keeps (tests/fixtures/nvml/) plays from the window's first batch:
    # the counter is the integral of its readings over the part of its window the run lasted.
    fixture = REPO / "tests" / "fixtures" / "nvml" / "synthetic-reference.json"
    study = small_study(tmp_path, tiny_model, "trace", prompts=120, tokens=32)
    spec = f"1,reading=instant,step=0.02,trace={fixture}"
    done = run_llem(*llem_args(study, tmp_path, spec), env={"HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == 0, done.stderr + done.stdout
    study_dir = only_study(tmp_path)
    assert (study_dir / "simulated-trace.json").read_text() == fixture.read_text()
    energy = result_of(study_dir, "e001-c1")["energy"]
    book = json.loads((study_dir / "runs" / "e001-c1" / "simulation.json").read_text())
    assert book["trace"] == {"recorded_window_s": [100.05, 111.95], "readings": 121}
    window = book["window"]
    armed = min(b[0] for b in book["batches"] if b[0] >= window["start_s"])  # the window's first batch
    recorded = json.loads(fixture.read_text())
    points = [(s["time_s"], s["power_w"]) for s in recorded["samples"]]
    w0 = recorded["window"][0]
    played_j = trapezoid_j(points, w0, w0 + window["end_s"] - armed)
    before_j = book["profile"]["loaded_idle_w"] * (armed - window["start_s"])  # the instant before it
    assert energy["source"] == "nvml_total_energy"
    assert energy["energy_j"] == pytest.approx(before_j + played_j, abs=energy["energy_uncertainty_j"] + 0.01)
    # 10 Hz samples of it miss at most half an interval of its one jump (120 W to 550 W at 101.0 s)
    assert energy["trace_energy_j"] == pytest.approx(energy["energy_j"], abs=0.1 * (550 - 120) / 2 + 1)
