"""make gpu-check: its sizing arithmetic and analysis on synthetic studies, and its replay
fixtures (the stages, the document and the command line: test_gpucheck_run.py; the real run
needs a GPU: docs/gpu-validation.md records it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llem.gpucheck_analysis import StageRecord, analyse, render
from llem.gpucheck_plan import GpuCheckError, Sizing, Step, Window, choose_tokens_out, size_windows
from llem_agent.contract import BaselineReport, ExperimentResult, GpuFacts, ValidityFlag
from llem_agent.energy import PowerReading, WindowWork, energy_report
from llem_agent.telemetry import Sample, write_parquet
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


def study(
    tmp_path: Path, change: Callable[[ExperimentResult], ExperimentResult] = lambda r: r, n_cycles: int = 3
) -> Path:
    """A gpu-check-shaped synthetic study (batch 1, 8, 32) whose every run is healthy, then ``change``d."""
    study_dir = make_study_dir(tmp_path, batch_sizes=(1, 8, 32), dtypes=("bfloat16",), failed_runs=0, n_cycles=n_cycles)
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


FACTS = {"command": "make gpu-check", "date": "d", "gpus": "0: H100", "host": "h", "wall_s": 300.0, "tokens_in": 128,
         "tokens_out": 128, "batch_sizes": "1, 8, 32", "cycles": 3, "baseline": "measured once"}  # fmt: skip


def done(*names: str) -> list[StageRecord]:
    return [StageRecord(n, "done", 10.0, 9.0) for n in names]


def test_a_healthy_study_meets_every_target_and_the_document_says_so(tmp_path):
    v = analyse(study(tmp_path), PAIRS)
    assert v.ok, [t for t in v.targets if not t.ok]
    assert v.harness_ratio == pytest.approx(0.995)
    assert list(v.by_batch) == [1, 8, 32]
    assert v.driver is None and v.parameters is None  # the synthetic results carry neither
    sizing = Sizing(128, [Window(1, 5, 2.56), Window(8, 5, 2.688)], None, measured=True)
    doc = render(v, FACTS, done("build", "probe", "study", "harness"), sizing)
    assert "**Status: complete** in 300 s." in doc
    assert "**Result: all targets met.**" in doc
    assert doc.count("| e0") == 9  # one row per run
    assert "110.0" in doc and "post_load" in doc  # idle power after load, and what the adjusted energy used
    assert "| 1 | 5 | 5 | 128 | 2.56 | 12.8 |" in doc  # the plan: 5 batches of 2.56 s
    assert doc.count("| 99.5 | 100.0 | 0.995 |") == 5  # one row per harness pair


def test_an_unfinished_check_says_which_stage_stopped_and_what_did_not_run(tmp_path):
    v = analyse(study(tmp_path), None)
    stages = [*done("build", "probe"), StageRecord("study", "running"), StageRecord("harness")]
    doc = render(v, FACTS, stages)
    assert "**Status: incomplete**: study running when this was written (cut short here if nothing follows); " \
        "harness not run (after 300 s)." in doc  # fmt: skip
    assert f"**Result so far: {len(v.targets)} of {len(v.targets)} targets met.**" in doc
    assert "## Harness pairs" not in doc


def test_without_a_study_the_runs_target_fails(tmp_path):
    for study_dir in (None, tmp_path):  # no study stage at all; a study directory without a manifest yet
        v = analyse(study_dir, PAIRS)
        first = v.targets[0]
        assert (first.name, first.seen, first.ok) == ("runs completed", "study not run", False)
        assert not v.ok and v.runs == []


def test_a_study_cut_short_fails_only_on_its_missing_runs(tmp_path):
    study_dir = study(tmp_path)
    manifest = json.loads((study_dir / "manifest.json").read_text())
    last = manifest["runs"][-1]  # cycle 3 of one experiment: every batch size still has runs
    last["status"] = "pending"
    (study_dir / "runs" / last["run_id"] / "result.json").unlink()
    (study_dir / "manifest.json").write_text(json.dumps(manifest))
    v = analyse(study_dir, PAIRS)
    assert {t.name: t.seen for t in v.targets if not t.ok} == {"runs completed": "8"}
    assert len(v.runs) == 8


def test_each_run_row_says_whether_its_baseline_was_measured_or_cached(tmp_path):
    cached = lambda r: r.model_copy(update={"energy": r.energy.model_copy(update={  # noqa: E731
        "baseline": r.energy.baseline.model_copy(update={"source": "cache"})})})  # fmt: skip
    v = analyse(study(tmp_path, cached, n_cycles=1), PAIRS)
    assert [r["baseline_source"] for r in v.runs] == ["cache"] * 3
    assert v.ok  # a cached idle baseline is not a failure


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


# --- sizing: windows from decode steps, numbers worked out by hand -------------------------


def test_a_batch_takes_its_prefill_then_one_step_per_further_token():
    assert Step(0.05, 0.025).batch_s(128) == pytest.approx(0.05 + 127 * 0.025)  # 3.225 s


def test_each_batch_size_gets_whole_batches_for_a_window_of_at_least_the_target():
    b1, b32 = size_windows({32: Step(0.05, 0.025), 1: Step(0.02, 0.02)}, tokens_out=128, window_s=12.0)
    # b1: 0.02 + 127 x 0.02 = 2.56 s a batch; 12 / 2.56 = 4.69 -> 5 batches = 12.8 s, 5 prompts
    assert (b1.batch, b1.n_batches, b1.n_prompts) == (1, 5, 5)
    assert b1.batch_s == pytest.approx(2.56) and b1.window_s == pytest.approx(12.8)
    # b32: 3.225 s a batch; 12 / 3.225 = 3.72 -> 4 batches = 12.9 s, 128 prompts
    assert (b32.batch, b32.n_batches, b32.n_prompts) == (32, 4, 128)
    assert b32.window_s == pytest.approx(12.9)


def test_output_tokens_stay_as_asked_while_the_prompts_fill_every_window():
    # b32 at 0.025 s a step: 200 // 32 = 6 batches need 2 s each, 128 tokens give 3.225 s
    assert choose_tokens_out({1: Step(0.02, 0.02), 32: Step(0.05, 0.025)}, 128, 12.0, 128) == 128


def test_a_fast_gpu_gets_more_output_tokens_when_the_prompts_run_out():
    # b32 at 4 ms a step: 6 batches (200 // 32) must last 2 s each: 1 + ceil((2 - 0.01) / 0.004) = 499 tokens
    steps = {1: Step(0.004, 0.004), 32: Step(0.01, 0.004)}
    assert choose_tokens_out(steps, 128, 12.0, 128) == 499
    b1, b32 = size_windows(steps, 499, 12.0)
    assert (b32.n_batches, b32.n_prompts) == (6, 192)  # 0.01 + 498 x 0.004 = 2.002 s; 12 / 2.002 -> 6
    assert b32.window_s == pytest.approx(12.012)
    assert (b1.n_batches, b1.window_s) == (7, pytest.approx(7 * 1.996))  # 0.004 x 499 = 1.996 s; -> 7 batches


def test_a_window_that_needs_more_positions_than_the_model_has_is_refused():
    # 0.5 ms a step: 1 + ceil((2 - 0.001) / 0.0005) = 3999 tokens, and 128 + 3999 > 2048
    with pytest.raises(GpuCheckError, match="3999 output tokens"):
        choose_tokens_out({32: Step(0.001, 0.0005)}, 128, 12.0, 128)
    with pytest.raises(GpuCheckError, match="more than the 200 built-in prompts"):
        choose_tokens_out({256: Step(0.02, 0.02)}, 128, 12.0, 128)


@given(
    steps=st.dictionaries(
        st.sampled_from([1, 2, 4, 8, 16, 32, 64]),
        st.tuples(st.floats(0.002, 0.5), st.floats(0.002, 0.1)),
        min_size=1,
    ),
    window_s=st.floats(10.0, 30.0),
)
def test_every_window_is_at_least_the_target_from_the_builtin_prompts(steps, window_s):
    """By construction, whatever the GPU: >= the target (>= 10 s), and never more prompts than there are."""
    measured = {b: Step(prefill, step) for b, (prefill, step) in steps.items()}
    try:
        tokens = choose_tokens_out(measured, 128, window_s, 128)
    except GpuCheckError:
        return  # too fast for the model's positions: refused, never a short window
    for w in size_windows(measured, tokens, window_s):
        assert w.window_s >= window_s >= 10.0
        assert w.n_prompts <= 200


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
    readings = [PowerReading(**r) for r in data.get("power_readings", [])] or None
    report = energy_report(
        data["device_names"], samples, start_mj=data["start_mj"], end_mj=data["end_mj"], window=(start, end),
        interval_s=data["interval_s"], work=work, readings=readings, counter_step_s=data.get("counter_step_s"),
    )  # fmt: skip
    counters = [(b - a) / 1000 for a, b in zip(data["start_mj"], data["end_mj"], strict=True)]
    assert report.source == "nvml_total_energy"
    assert report.energy_j == pytest.approx(sum(counters))
    assert report.trace_energy_j == pytest.approx(report.energy_j, rel=0.02)  # the gpu-check target
    if report.prefill_energy_j is not None and report.decode_energy_j is not None:
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
