"""Warmup modes and the thermal floor, through a dummy engine with a fake clock."""

from __future__ import annotations

from llem_agent.contract import WarmupConfig
from llem_agent.metrics import BatchObservation
from llem_agent.warmup import coefficient_of_variation, run_warmup


class TimedEngine:
    """Each batch 'takes' the next latency of a script, on a fake clock."""

    def __init__(self, latencies: list[float], device: str = "cpu", size: int = 2) -> None:
        self.latencies = list(latencies)
        self.device, self.size = device, size
        self.now = 0.0
        self.batches: list[list[str]] = []

    def clock(self) -> float:
        return self.now

    def batch_size(self) -> int:
        return self.size

    def prepare(self, prompts):
        return prompts

    def generate(self, prompts):
        self.batches.append(prompts)
        self.now += self.latencies.pop(0) if self.latencies else 1.0
        return BatchObservation([1] * len(prompts), [1] * len(prompts), [[0.1]] * len(prompts))

    def synchronize(self):
        pass

    def effective(self):
        return {"device": self.device}


PROMPTS = [f"p{i}" for i in range(5)]


def test_fixed_mode_runs_full_batches_covering_n_warmup_prompts():
    engine = TimedEngine([])
    report = run_warmup(engine, PROMPTS, WarmupConfig(n_warmup=5), clock=engine.clock, sleep=lambda s: None)
    assert (report.mode, report.batches, report.prompts) == ("fixed", 3, 6)
    assert all(len(b) == 2 for b in engine.batches)
    assert engine.batches[2] == ["p4", "p0"]  # drawn from the prompts, wrapping


def test_cv_mode_stops_when_latency_settles():
    engine = TimedEngine([3.0, 1.0, 2.0, 1.0, 1.01, 0.99, 1.0])
    config = WarmupConfig(convergence_detection=True, cv_threshold=0.05, window_size=3, min_prompts=4, max_prompts=20)
    report = run_warmup(engine, PROMPTS, config, clock=engine.clock, sleep=lambda s: None)
    assert report.mode == "cv"
    assert report.converged is True
    assert report.batches == 6
    assert report.final_cv is not None
    assert report.final_cv < 0.05


def test_cv_mode_gives_up_at_max_prompts():
    engine = TimedEngine([1.0, 3.0] * 20)
    config = WarmupConfig(convergence_detection=True, cv_threshold=0.01, window_size=2, min_prompts=2, max_prompts=8)
    report = run_warmup(engine, PROMPTS, config, clock=engine.clock, sleep=lambda s: None)
    assert (report.converged, report.prompts) == (False, 8)


def test_thermal_floor_applies_on_gpu_only():
    slept: list[float] = []
    gpu = run_warmup(
        TimedEngine([], device="cuda"), PROMPTS, WarmupConfig(thermal_floor_seconds=45), sleep=slept.append
    )
    assert slept == [45]
    assert gpu.thermal_floor_s == 45
    cpu = run_warmup(TimedEngine([]), PROMPTS, WarmupConfig(thermal_floor_seconds=45), sleep=slept.append)
    assert slept == [45]
    assert cpu.thermal_floor_s == 0.0
    assert cpu.thermal_floor_note == "not applied: no GPU (CPU run)"


def test_disabled_and_cv_helper():
    assert run_warmup(TimedEngine([]), PROMPTS, WarmupConfig(enabled=False)).mode == "disabled"
    assert coefficient_of_variation([1.0, 1.0, 1.0]) == 0.0
    assert coefficient_of_variation([1.0]) == float("inf")
