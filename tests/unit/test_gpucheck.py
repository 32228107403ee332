"""make gpu-check: its analysis on synthetic studies, its replay fixtures, and its refusal
without a GPU (the real run needs one: docs/gpu-validation.md records it)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from llem_agent.contract import BaselineReport, ExperimentResult, GpuFacts, ValidityFlag
from llem_agent.energy import WindowWork, energy_report
from llem_agent.telemetry import Sample, write_parquet
from orchestrator.gpucheck import analyse, render
from tests.conftest import REPO
from tests.synthetic import make_study_dir

FIXTURES = REPO / "tests" / "fixtures" / "nvml"
PAIRS = [{"agent_tokens_per_s": 99.5, "bare_tokens_per_s": 100.0}] * 5


def healthy(result: ExperimentResult) -> ExperimentResult:
    """A run the validation should accept: 12 s window, counter = trace, a 700 W limit, no flags."""
    batch = int(result.effective.get("batch_size") or 1)
    energy_j = 12.0 * (250 + 10 * batch)
    tokens = 1000 * batch
    baseline = BaselineReport(
        strategy="fresh", source="measured", power_w=[70.0], total_power_w=70.0, duration_s=10, measured_at=0, age_s=1,
        loaded_power_w=[110.0], loaded_total_power_w=110.0, loaded_duration_s=15, adjusted_with="post_load",
    )  # fmt: skip
    devices = [result.energy.devices[0].model_copy(update={"energy_j": energy_j, "trace_energy_j": energy_j * 1.005})]
    energy = result.energy.model_copy(
        update={
            "energy_j": energy_j,
            "devices": devices,
            "flags": [],
            "baseline": baseline,
            "j_per_output_token": energy_j / tokens,
        }
    )
    gpu = GpuFacts(index=0, name="NVIDIA H100 80GB HBM3", uuid="GPU-0", power_limit_w=700.0)
    return result.model_copy(
        update={
            "energy": energy,
            "timings": result.timings.model_copy(update={"measure_s": 12.0}),
            "environment": result.environment.model_copy(update={"gpus": [gpu]}),
        }
    )


def study(tmp_path: Path, change: Callable[[ExperimentResult], ExperimentResult] = lambda r: r) -> Path:
    study_dir = make_study_dir(tmp_path, batch_sizes=(1, 8, 32), dtypes=("bfloat16",), failed_runs=0)
    for path in sorted(study_dir.glob("runs/*/result.json")):
        config = json.loads((path.parent / "experiment.json").read_text())["config"]
        result = ExperimentResult.model_validate_json(path.read_text())
        result = result.model_copy(update={"effective": {"batch_size": config["pytorch"]["batch_size"]}})
        result = change(healthy(result))
        path.write_text(result.model_dump_json())
        rows = [
            {"timestamp_s": float(t), "gpu_index": 0, "power_w": 300.0, "temperature_c": 60.0, "memory_used_mb": 1.0,
             "memory_total_mb": 2.0, "sm_utilisation_pct": 99.0, "throttle_reasons": 0}
            for t in range(13)
        ]  # fmt: skip
        write_parquet(rows, path.parent / "timeseries.parquet")
    return study_dir


def failing(study_dir: Path, harness=PAIRS) -> set[str]:
    return {t.name for t in analyse(study_dir, harness).targets if not t.ok}


def test_a_healthy_study_meets_every_target_and_the_document_says_so(tmp_path):
    v = analyse(study(tmp_path), PAIRS)
    assert v.ok, [t for t in v.targets if not t.ok]
    assert v.harness_ratio == pytest.approx(0.995)
    assert list(v.by_batch) == [1, 8, 32]
    doc = render(v, {"command": "make gpu-check", "date": "d", "gpus": "0: H100", "host": "h", "wall_s": 300.0,
                     "tokens_in": 128, "tokens_out": 192, "cycles": 3}, "Not run: no Docker engine here.")  # fmt: skip
    assert "**Result: all targets met.**" in doc
    assert doc.count("| e0") == 9  # one row per run
    assert "110.0" in doc and "post_load" in doc  # idle power after load, and what the adjusted energy used


@pytest.mark.parametrize(
    ("change", "target"),
    [
        (lambda r: r.model_copy(update={"energy": r.energy.model_copy(update={"devices": [
            r.energy.devices[0].model_copy(update={"trace_energy_j": r.energy.devices[0].energy_j * 1.03})]})}),
         "counter vs integrated trace"),
        (lambda r: r.model_copy(update={"energy": r.energy.model_copy(update={"energy_j": 700.0 * 13})}),
         "energy <= power limit x window"),
        (lambda r: r.model_copy(update={"energy": r.energy.model_copy(update={"j_per_output_token": 1.0})}),
         "J/output token falls with batch size"),
        (lambda r: r.model_copy(update={"requests": [q.model_copy(update={"ttft_s": q.e2e_latency_s + 1})
                                                     for q in r.requests]}),
         "TTFT <= end-to-end"),
        (lambda r: r.model_copy(update={"timings": r.timings.model_copy(update={"measure_s": 4.0}),
                                        "energy": r.energy.model_copy(update={"energy_j": r.energy.energy_j / 3})}),
         "measured window"),
        (lambda r: r.model_copy(update={"energy": r.energy.model_copy(update={"flags": [
            ValidityFlag(code="throttled", message="thermal slowdown")]})}),
         "validity flags"),
    ],
)  # fmt: skip
def test_each_target_fails_when_its_evidence_does(tmp_path, change, target):
    assert failing(study(tmp_path, change)) == {target}


def test_a_slow_harness_and_a_missing_sidecar_fail(tmp_path):
    study_dir = study(tmp_path)
    next(study_dir.glob("runs/*/timeseries.parquet")).unlink()
    slow = [{"agent_tokens_per_s": 95.0, "bare_tokens_per_s": 100.0}] * 3
    assert failing(study_dir, slow) == {"telemetry sidecar", "harness ratio (agent / bare generate loop)"}


def test_without_a_gpu_it_refuses_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.gpucheck", "--work", "/nonexistent/never-made"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    if "no NVIDIA GPU here" not in done.stderr:
        pytest.fail(f"expected the no-GPU refusal on this machine, got exit {done.returncode}: {done.stderr}")
    assert done.returncode == 3
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


# --- replay fixtures: real NVML traces kept by make gpu-check (and one synthetic reference) --


def fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


def test_there_is_at_least_the_synthetic_reference_fixture():
    assert (FIXTURES / "synthetic-reference.json").exists()


@pytest.mark.parametrize("path", fixtures(), ids=lambda p: p.stem)
def test_a_recorded_trace_replays_through_the_energy_report(path: Path):
    data = json.loads(path.read_text())
    samples = [Sample(**s) for s in data["samples"]]
    work = WindowWork(**{**data["work"], "batch_spans": [tuple(s) for s in data["work"]["batch_spans"]]})
    start, end = data["window"]
    report = energy_report(
        data["device_names"], samples, start_mj=data["start_mj"], end_mj=data["end_mj"], window=(start, end),
        interval_s=data["interval_s"], work=work,
    )  # fmt: skip
    counters = [(b - a) / 1000 for a, b in zip(data["start_mj"], data["end_mj"], strict=True)]
    assert report.source == "nvml_total_energy"
    assert report.energy_j == pytest.approx(sum(counters))
    assert report.trace_energy_j == pytest.approx(report.energy_j, rel=0.02)  # the gpu-check target
    assert report.prefill_energy_j + report.decode_energy_j <= report.trace_energy_j * 1.001
    assert report.n_samples >= (end - start) / data["interval_s"] * 0.9


def test_the_reference_fixture_is_what_the_agent_writes(tmp_path):
    """The synthetic reference has the shape EnergyMeter.raw_trace() produces."""
    from llem_agent.energy import EnergyMeter
    from tests.unit.test_energy import ReplayNvml

    meter = EnergyMeter(lambda: ReplayNvml(["H100"], 300.0), interval_s=0.01).open()
    meter.start()
    meter.stop(WindowWork(10, 10, 1, [(0.0, 0.01, 0.05)]))
    raw = meter.raw_trace()
    assert raw is not None
    reference = json.loads((FIXTURES / "synthetic-reference.json").read_text())
    assert set(raw) <= set(reference)
    assert set(raw["samples"][0]) == set(reference["samples"][0])
