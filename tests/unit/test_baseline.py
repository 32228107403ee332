"""Idle baseline strategies (fresh, cached, validated) and the baseline-adjusted energy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llem_agent.baseline import CACHE_FILE, SPOT_CHECK_S, resolve_baseline
from llem_agent.contract import BaselineConfig
from llem_agent.energy import WindowWork, energy_report
from llem_agent.telemetry import Sample


class FakeIdle:
    def __init__(self, watts: list[float]) -> None:
        self.watts = watts
        self.durations: list[float] = []

    def device_ids(self) -> list[str]:
        return [f"GPU-{i}" for i in range(len(self.watts))]

    def idle_power_w(self, duration_s: float) -> list[float]:
        self.durations.append(duration_s)
        return list(self.watts)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_fresh_measures_every_time_and_writes_no_cache(tmp_path: Path):
    idle = FakeIdle([60.0, 62.0])
    for _ in range(2):
        report = resolve_baseline(idle, BaselineConfig(strategy="fresh", duration_seconds=10), tmp_path)
    assert idle.durations == [10, 10]
    assert (report.source, report.total_power_w) == ("measured", 122.0)
    assert not (tmp_path / CACHE_FILE).exists()


def test_cached_reuses_until_the_ttl_expires(tmp_path: Path):
    idle, clock = FakeIdle([60.0]), Clock()
    config = BaselineConfig(strategy="cached", cache_ttl_seconds=600)
    assert resolve_baseline(idle, config, tmp_path, clock).source == "measured"
    clock.t += 300
    reused = resolve_baseline(idle, config, tmp_path, clock)
    assert (reused.source, reused.age_s) == ("cache", 300)
    clock.t += 400
    assert resolve_baseline(idle, config, tmp_path, clock).source == "measured"
    assert idle.durations == [30.0, 30.0]


def test_validated_spot_checks_and_remeasures_after_drift(tmp_path: Path):
    idle, clock = FakeIdle([100.0]), Clock()
    config = BaselineConfig(strategy="validated", validation_interval=2, drift_threshold=0.1)
    resolve_baseline(idle, config, tmp_path, clock)  # measured, use 1
    check = resolve_baseline(idle, config, tmp_path, clock)  # use 2: spot check, no drift
    assert check.source == "cache_validated"
    assert idle.durations == [30.0, SPOT_CHECK_S]
    idle.watts = [130.0]  # the idle power moved by 30%
    assert resolve_baseline(idle, config, tmp_path, clock).source == "cache"  # use 3
    drifted = resolve_baseline(idle, config, tmp_path, clock)  # use 4: check finds the drift
    assert (drifted.source, drifted.total_power_w) == ("remeasured_after_drift", 130.0)


def test_a_damaged_cache_is_remeasured_not_trusted(tmp_path: Path):
    (tmp_path / CACHE_FILE).write_text(json.dumps({"GPU-0": {"power_w": "oops"}}))
    report = resolve_baseline(FakeIdle([55.0]), BaselineConfig(strategy="cached"), tmp_path)
    assert report.source == "measured"


def test_adjusted_energy_and_stale_baseline_flag(tmp_path: Path):
    baseline = resolve_baseline(FakeIdle([50.0]), BaselineConfig(strategy="fresh"), None)
    samples = [Sample(i * 0.1, 0, 300.0, 60.0, 1.0, 2.0, 90.0, 1980.0, 0) for i in range(101)]
    work = WindowWork(10, 10, 1, [(0.0, 1.0, 10.0)])
    kwargs = {"start_mj": [0], "end_mj": [3_000_000], "window": (0.0, 10.0), "interval_s": 0.1, "work": work}
    r = energy_report(["H100"], samples, baseline=baseline, baseline_ttl_s=7200, **kwargs)
    assert r.adjusted_energy_j == pytest.approx(3000.0 - 50.0 * 10.0)
    assert r.baseline is not None
    assert "stale_baseline" not in {f.code for f in r.flags}
    old = baseline.model_copy(update={"age_s": 8000.0})
    stale = energy_report(["H100"], samples, baseline=old, baseline_ttl_s=7200, **kwargs)
    assert "stale_baseline" in {f.code for f in stale.flags}
