"""Every energy figure of a window pinned to values worked out by hand (issue 22, section 2).

energy_j, trace_energy_j, adjusted_energy_j (pre-load, post-load and recomputed from Zeus's
figure), j_per_output_token, j_per_token, j_per_request, mean and peak power, the uncertainty,
the loaded idle power over the second half of the thermal floor, and the idle baseline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from llem_agent.baseline import SPOT_CHECK_S, resolve_baseline
from llem_agent.contract import BaselineConfig, BaselineReport
from llem_agent.energy import (
    MAX_STEP_WAIT_S,
    STEP_POLL_S,
    BaselineFailed,
    EnergyMeter,
    PowerReading,
    Sampler,
    WindowWork,
    energy_report,
    with_external,
)
from llem_agent.energy.external import ExternalEnergy
from llem_agent.telemetry import Sample
from tests.unit.test_baseline import FakeIdle

WORK = WindowWork(output_tokens=400, input_tokens=100, n_requests=5, batch_spans=[])


def two_devices() -> list[Sample]:
    """Device 0: 100 W at 0.0-4.9 s, 300 W at 5.0-10.0 s; device 1: 50 W throughout, read 3 ms
    after device 0 in each sweep (samples every 0.1 s)."""
    zero = [Sample(round(i * 0.1, 9), 0, 100.0 if i < 50 else 300.0) for i in range(101)]
    one = [Sample(round(i * 0.1 + 0.003, 9), 1, 50.0) for i in range(100)] + [Sample(10.0, 1, 50.0)]
    return zero + one


def report(**extra: object):
    args: dict[str, object] = {
        "start_mj": [1_000_000, 7_000_000], "end_mj": [3_000_000, 7_500_000], "window": (0.0, 10.0),
        "interval_s": 0.1, "work": WORK,
    }  # fmt: skip
    return energy_report(["H100", "H100"], two_devices(), **(args | extra))  # type: ignore[arg-type]


def baseline(total_w: float = 40.0, loaded_w: float | None = None, age_s: float = 0.0) -> BaselineReport:
    loaded = {} if loaded_w is None else {"loaded_power_w": [loaded_w], "loaded_total_power_w": loaded_w,
                                          "loaded_duration_s": 15.0, "adjusted_with": "post_load"}  # fmt: skip
    return BaselineReport(
        strategy="fresh", source="measured", power_w=[total_w * 0.75, total_w * 0.25], total_power_w=total_w,
        duration_s=30.0, measured_at=0.0, age_s=age_s, **loaded,
    )  # fmt: skip


def test_energy_from_the_counters_and_every_denominator():
    r = report()
    # Counters: (3,000,000 - 1,000,000) mJ = 2000 J and (7,500,000 - 7,000,000) mJ = 500 J.
    assert r.source == "nvml_total_energy"
    assert [d.energy_j for d in r.devices] == pytest.approx([2000.0, 500.0])
    assert r.energy_j == pytest.approx(2500.0)
    # 2500 J / 400 output tokens = 6.25; / 500 tokens = 5.0; / 5 requests = 500; / 10 s = 250 W.
    assert r.j_per_output_token == pytest.approx(6.25)
    assert r.j_per_token == pytest.approx(5.0)
    assert r.j_per_request == pytest.approx(500.0)
    assert r.mean_power_w == pytest.approx(250.0)


def test_the_trace_beside_the_counter():
    r = report()
    # Device 0: 100 W x 4.9 s = 490 J, the 4.9-5.0 s step (100 + 300) / 2 x 0.1 = 20 J,
    # 300 W x 5 s = 1500 J: 2010 J. Device 1: 50 W x 10 s = 500 J. Together 2510 J, 0.4%
    # from the counters: no disagreement flag.
    assert [d.trace_energy_j for d in r.devices] == pytest.approx([2010.0, 500.0])
    assert r.trace_energy_j == pytest.approx(2510.0)
    assert r.flags == []
    # Per device, the mean of its samples in the window: (50 x 100 + 51 x 300) / 101 = 20300 / 101.
    assert r.devices[0].mean_power_w == pytest.approx(20300.0 / 101.0)
    assert r.devices[1].mean_power_w == pytest.approx(50.0)
    assert [d.peak_power_w for d in r.devices] == [300.0, 50.0]
    assert r.n_samples == 202
    assert r.sample_interval_s == 0.1


def test_peak_power_is_the_highest_sum_over_one_sweep():
    # Device 1 is read 3 ms after device 0: both fall in one 0.1 s bucket; the highest sum is
    # 300 + 50 = 350 W (not 300 + 300 from two sweeps of device 0, nor 300 alone).
    assert report().peak_power_w == pytest.approx(350.0)


def test_the_counters_uncertainty_from_its_steps():
    # Aligned: each end read within one 1 ms poll of its step: 2 x 0.001 s x 250 W = 0.5 J, plus
    # 1 mJ of counter resolution x 2 ends x 2 devices = 0.004 J.
    assert report().energy_uncertainty_j == pytest.approx(0.504)
    assert report().counter_aligned is True
    # Unaligned with a 50 ms step: 2 x 0.05 x 250 = 25 J (+ 0.004).
    unaligned = report(counter_aligned=False, counter_step_s=0.05)
    assert unaligned.energy_uncertainty_j == pytest.approx(25.004)
    assert unaligned.counter_aligned is False and unaligned.counter_step_s == 0.05
    # Unaligned and no step seen: the longest wait, 2 x 0.25 x 250 = 125 J (+ 0.004).
    assert report(counter_aligned=False).energy_uncertainty_j == pytest.approx(125.004)
    assert (STEP_POLL_S, MAX_STEP_WAIT_S) == (0.001, 0.25)


def test_without_counters_the_trace_is_the_energy_and_has_no_counter_uncertainty():
    r = report(start_mj=[None, None], end_mj=[None, None])
    # 2010 + 500 = 2510 J from the trace; 2510 / 400 = 6.275 J per output token; 251 W.
    assert r.source == "nvml_power_trace"
    assert r.energy_j == pytest.approx(2510.0)
    assert r.j_per_output_token == pytest.approx(6.275)
    assert r.mean_power_w == pytest.approx(251.0)
    assert r.energy_uncertainty_j is None and r.counter_aligned is None
    assert r.flags == []  # nothing to compare the trace with


def test_one_device_without_a_counter_is_integrated_and_only_the_other_is_compared():
    # Device 0 has a counter (2000 J), device 1 none (its trace, 500 J): 2500 J. The comparison is
    # 2000 J counter vs 2010 J trace of device 0 alone.
    r = report(start_mj=[1_000_000, None], end_mj=[3_000_000, None])
    assert r.source == "nvml_power_trace"
    assert r.energy_j == pytest.approx(2500.0)
    assert [d.energy_j for d in r.devices] == [pytest.approx(2000.0), None]
    assert r.flags == []  # 2000 J vs 2010 J: 0.5% (device 1's trace is not compared with anything)
    disagree = report(start_mj=[1_000_000, None], end_mj=[2_900_000, None])  # 1900 vs 2010 J: 5.8%
    assert [f.code for f in disagree.flags] == ["counter_trace_disagree"]


def test_the_counter_and_trace_disagree_in_either_direction():
    # Trace 2510 J. Counters 2400 J (trace 4.6% above): fine; 2390 J (5.0%) is the edge: 120 / 2390
    # = 5.02%: flagged. Counters 2640 J (trace 4.9% below): fine; 2650 J: 140 / 2650 = 5.3%: flagged.
    def flagged(total_mj: int) -> bool:
        r = report(start_mj=[0, 0], end_mj=[total_mj - 500_000, 500_000])
        return [f.code for f in r.flags] == ["counter_trace_disagree"]

    assert not flagged(2_400_000)
    assert flagged(2_390_000)
    assert not flagged(2_640_000)
    assert flagged(2_650_000)


def test_adjusted_energy_subtracts_the_idle_power_of_the_window():
    # Pre-load idle 40 W over 10 s: 2500 - 400 = 2100 J.
    assert report(baseline=baseline(40.0)).adjusted_energy_j == pytest.approx(2100.0)
    # Loaded idle 70 W (the thermal floor ran): 2500 - 700 = 1800 J.
    post = report(baseline=baseline(40.0, loaded_w=70.0))
    assert post.adjusted_energy_j == pytest.approx(1800.0)
    assert post.baseline is not None and post.baseline.subtracted_power_w == 70.0
    assert report().adjusted_energy_j is None


@pytest.mark.parametrize(("age_s", "flagged"), [(89.0, False), (90.0, False), (91.0, True)])
def test_a_baseline_is_stale_when_it_is_older_than_its_ttl_at_the_windows_end(age_s: float, flagged: bool):
    # 90 s old at the window's start + the 10 s window = 100 s, the TTL: not stale yet.
    r = report(baseline=baseline(age_s=age_s), baseline_ttl_s=100.0)
    assert [f.code for f in r.flags] == (["stale_baseline"] if flagged else [])


def test_zero_work_has_no_per_unit_energy():
    r = report(work=WindowWork(output_tokens=0, input_tokens=0, n_requests=0, batch_spans=[]))
    assert r.energy_j == pytest.approx(2500.0)
    assert (r.j_per_output_token, r.j_per_token, r.j_per_request) == (None, None, None)
    prompt_only = report(work=WindowWork(output_tokens=0, input_tokens=250, n_requests=2, batch_spans=[]))
    assert (prompt_only.j_per_token, prompt_only.j_per_request) == pytest.approx((10.0, 1250.0))


def test_a_counter_gone_backwards_is_replaced_by_the_trace_and_flagged():
    r = report(start_mj=[3_000_000, 7_000_000], end_mj=[1_000_000, 7_500_000])
    # Device 0 from its trace (2010 J), device 1 from its counter (500 J).
    assert r.energy_j == pytest.approx(2510.0)
    assert r.source == "nvml_power_trace"
    assert "counter_reset" in [f.code for f in r.flags]
    empty = energy_report(["H100"], [], start_mj=[5], end_mj=[1], window=(0.0, 10.0), interval_s=0.1, work=WORK)
    assert empty.energy_j is None and empty.unavailable_reason == "the energy counter went backwards"
    none = energy_report(["H100"], [], start_mj=[None], end_mj=[None], window=(0.0, 10.0), interval_s=0.1, work=WORK)
    assert none.energy_j is None and none.unavailable_reason == "no counter and no power samples"


def test_power_capped_fraction_and_throttling_in_the_window():
    samples = [Sample(round(i * 0.1, 9), 0, 300.0, throttle_reasons=0x4 if i < 25 else 0) for i in range(101)]
    samples.append(Sample(20.0, 0, 300.0, throttle_reasons=0x40))  # after the window: not counted
    r = energy_report(["H100"], samples, start_mj=[0], end_mj=[3_000_000], window=(0.0, 10.0), interval_s=0.1,
                      work=WORK)  # fmt: skip
    assert r.power_capped_fraction == pytest.approx(25 / 101)
    assert r.flags == []
    assert r.n_samples == 101


# --- an optional sampler's figure becomes the run's energy ----------------------------------


def test_zeus_figure_becomes_the_energy_and_the_adjusted_energy_is_recomputed_from_it():
    nvml = report(baseline=baseline(40.0))
    zeus = SimpleNamespace(name="zeus", polls_gpu=False)
    r = with_external(nvml, zeus, ExternalEnergy(energy_j=2200.0, parts_j={"gpu_j": 2200.0}), WORK, 10.0)  # type: ignore[arg-type]
    # 2200 J: 2200 - 40 W x 10 s = 1800 J above idle (not NVML's 2100 J); 2200 / 400 = 5.5,
    # 2200 / 500 = 4.4, 2200 / 5 = 440, 2200 / 10 s = 220 W.
    assert r.source == "zeus"
    assert r.energy_j == pytest.approx(2200.0)
    assert r.adjusted_energy_j == pytest.approx(1800.0)
    assert (r.j_per_output_token, r.j_per_token, r.j_per_request) == pytest.approx((5.5, 4.4, 440.0))
    assert r.mean_power_w == pytest.approx(220.0)
    assert r.trace_energy_j == pytest.approx(2510.0)  # llem's own trace kept beside it
    assert r.external is not None and r.external.energy_j == 2200.0 and r.external.sampler == "zeus"
    assert r.unavailable_reason is None


def test_a_sampler_that_polls_the_gpus_leaves_no_trace_and_no_adjusted_energy():
    # A 3 s window with no sample from 1.0 to 1.6 s; counters 2500 J against a 450 J trace.
    gappy = [s for s in two_devices() if not 1.0 < s.time_s < 1.6]
    work = WindowWork(output_tokens=400, input_tokens=100, n_requests=5, batch_spans=[(0.0, 0.5, 3.0)])
    nvml = energy_report(["H100", "H100"], gappy, start_mj=[0, 0], end_mj=[2_000_000, 500_000], window=(0.0, 3.0),
                         interval_s=0.1, work=work, baseline=baseline(40.0))  # fmt: skip
    assert [f.code for f in nvml.flags] == ["short_window", "sampling_gap", "counter_trace_disagree"]
    assert nvml.prefill_energy_j is not None and nvml.trace_energy_j is not None
    codecarbon = SimpleNamespace(name="codecarbon", polls_gpu=True)
    r = with_external(nvml, codecarbon, ExternalEnergy(energy_j=900.0), work, 3.0)  # type: ignore[arg-type]
    # 900 J over 3 s: 300 W; 900 / 400 = 2.25 J per output token.
    assert r.energy_j == pytest.approx(900.0) and r.mean_power_w == pytest.approx(300.0)
    assert r.j_per_output_token == pytest.approx(2.25)
    assert [f.code for f in r.flags] == ["short_window"]  # the trace's flags mean nothing now
    assert r.trace_energy_j is None and r.adjusted_energy_j is None
    assert r.prefill_energy_j is None and r.decode_energy_j is None
    assert r.baseline_note is not None and r.baseline_note.startswith("not subtracted")


def test_a_sampler_without_a_figure_leaves_llems_own():
    nvml = report(baseline=baseline(40.0))
    r = with_external(nvml, SimpleNamespace(name="zeus", polls_gpu=False), ExternalEnergy(energy_j=None), WORK, 10.0)  # type: ignore[arg-type]
    assert r.energy_j == pytest.approx(2500.0) and r.source == "nvml_total_energy"
    assert r.adjusted_energy_j == pytest.approx(2100.0)
    assert r.external is not None and r.external.energy_j is None
    zero_time = with_external(nvml, SimpleNamespace(name="zeus", polls_gpu=False), ExternalEnergy(energy_j=10.0),
                              WindowWork(0, 0, 0, []), 0.0)  # type: ignore[arg-type]  # fmt: skip
    assert zero_time.mean_power_w is None and zero_time.j_per_output_token is None


# --- the meter on a scripted clock: baseline, loaded idle, window -------------------------


class Bench:
    """A fake clock that only ``sleep`` moves, and one GPU on it: its power is ``power(t)`` and
    its energy counter integrates that power (mJ) as time moves."""

    def __init__(self, power: Callable[[float], float]) -> None:
        self.t = 1000.0
        self.power = power
        self.mj = 0.0
        self.reads: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.mj += self.power(self.t) * seconds * 1000.0
        self.t += seconds

    def device_names(self) -> list[str]:
        return ["H100"]

    def device_uuids(self) -> list[str]:
        return ["GPU-0"]

    def total_energy_mj(self, index: int) -> int:
        return round([self.mj][index])  # one device: index 0, nothing else

    def read(self, index: int) -> Sample:
        self.reads.append(self.t)
        return Sample(0.0, index, self.power(self.t), 50.0)

    def facts(self) -> list[object]:
        return []

    def close(self) -> None: ...


def meter_on(bench: Bench, interval_s: float = 1.0) -> EnergyMeter:
    meter = EnergyMeter(lambda: bench, interval_s=interval_s, clock=bench.clock).open()  # type: ignore[arg-type, return-value]
    meter.sleep = bench.sleep
    return meter


def test_idle_power_is_the_mean_of_the_samples_taken():
    # 5 s at 1 s intervals: 5 samples at 0..4 s of 40 42 44 46 48 W: mean 44 W.
    bench = Bench(lambda t: 40.0 + 2.0 * (t - 1000.0))
    assert meter_on(bench).idle_power_w(5.0) == pytest.approx([44.0])
    assert bench.reads == pytest.approx([1000.0, 1001.0, 1002.0, 1003.0, 1004.0])
    assert bench.t == pytest.approx(1005.0)


class Quiet:
    """An external sampler that polls the GPUs itself (llem's sampler thread stays off, so the
    trace is just the window's two bracketing readings) and measures nothing."""

    name = "codecarbon"
    polls_gpu = True

    def start(self) -> None: ...

    def stop(self) -> ExternalEnergy:
        return ExternalEnergy(energy_j=None)


def test_loaded_idle_is_the_mean_over_the_second_half_of_the_thermal_floor(tmp_path: Path):
    bench = Bench(lambda t: 50.0)
    meter = EnergyMeter(lambda: bench, interval_s=1.0, clock=bench.clock, external_factory=lambda n: Quiet()).open()  # type: ignore[arg-type, return-value]
    meter.sleep = bench.sleep
    meter.measure_baseline(BaselineConfig(strategy="fresh", duration_seconds=5), tmp_path)  # 50 W before loading
    # The floor: 11 s, sampled at 0..10 s while the GPU cools from warm-up, 150 - 10 t W:
    # 150 140 ... 50. Its second half starts at (0 + 10) / 2 = 5 s: 100 90 80 70 60 50 W, mean
    # 75 W (the whole pause would say 100 W; from 6 s on, 70 W).
    start = bench.t
    bench.power = lambda t: 150.0 - 10.0 * (t - start)
    meter.loaded_idle(11.0, bench.sleep)
    assert bench.t == pytest.approx(start + 11.0)
    bench.power = lambda t: 300.0
    meter.start()  # two 1 ms steps of the counter: the window opens at start + 11.002 s
    opened = bench.t
    bench.sleep(10.0)
    r = meter.stop(WindowWork(10, 10, 1, [(0.0, 1.0, 10.0)]))  # one more 1 ms step closes it
    duration = bench.t - opened
    assert duration == pytest.approx(10.001)
    b = r.baseline
    assert b is not None
    assert b.power_w == pytest.approx([50.0]) and b.total_power_w == pytest.approx(50.0)
    assert b.loaded_power_w == pytest.approx([75.0]) and b.loaded_total_power_w == pytest.approx(75.0)
    assert b.loaded_duration_s == pytest.approx(5.5)
    assert b.adjusted_with == "post_load"
    # 300 W x 10.001 s = 3000.3 J on the counter; above the loaded idle: 225 W x 10.001 s = 2250.225 J.
    assert r.energy_j == pytest.approx(3000.3, abs=0.01)
    assert r.adjusted_energy_j == pytest.approx(2250.225, abs=0.01)
    assert r.mean_power_w == pytest.approx(300.0, abs=0.01)
    assert r.counter_step_s == pytest.approx(STEP_POLL_S) and r.counter_aligned is True
    # The trace: a reading just before the window opened (2 ms) and one as it closed, both on the
    # meter's clock, 300 W held flat over the window.
    assert r.n_samples == 1
    assert r.trace_energy_j == pytest.approx(3000.3, abs=0.01)
    meter.close()


def test_a_cached_baseline_that_expires_during_the_window_is_stale(tmp_path: Path):
    import json
    import time

    # Measured 7195 s ago, TTL 7200 s: still fresh when the window opens, 5 s over at its end.
    entry = {"power_w": [50.0], "measured_at": time.time() - 7195.0, "uses": 0}
    (tmp_path / "baselines.json").write_text(json.dumps({"GPU-0": entry}))
    bench = Bench(lambda t: 300.0)
    meter = EnergyMeter(lambda: bench, interval_s=1.0, clock=bench.clock, external_factory=lambda n: Quiet()).open()  # type: ignore[arg-type, return-value]
    meter.sleep = bench.sleep
    meter.measure_baseline(BaselineConfig(strategy="cached", cache_ttl_seconds=7200), tmp_path)
    meter.start()
    bench.sleep(10.0)
    r = meter.stop(WORK)
    assert r.baseline is not None and r.baseline.source == "cache"
    assert r.baseline.age_s == pytest.approx(7195.0, abs=5.0)
    assert "stale_baseline" in [f.code for f in r.flags]
    # Pre-load idle 50 W: 3000.3 - 50 x 10.001 = 2500.25 J above idle.
    assert r.adjusted_energy_j == pytest.approx(2500.25, abs=0.01)


def test_the_meter_reports_which_power_reading_the_device_gives(tmp_path: Path):
    class Averaged(Bench):
        def power_readings(self) -> list[PowerReading]:
            return [PowerReading("average_1s")]

    bench = Averaged(lambda t: 300.0)
    meter = EnergyMeter(lambda: bench, interval_s=1.0, clock=bench.clock, external_factory=lambda n: Quiet()).open()  # type: ignore[arg-type, return-value]
    meter.sleep = bench.sleep
    meter.start()
    bench.sleep(10.0)
    r = meter.stop(WORK)
    (device,) = r.devices
    assert (device.power_reading, device.trace_shift_s) == ("average_1s", 0.5)


def test_zeus_through_the_meter_divides_by_the_windows_duration(tmp_path: Path):
    class Zeus:
        name = "zeus"
        polls_gpu = False

        def start(self) -> None: ...

        def stop(self) -> ExternalEnergy:
            return ExternalEnergy(energy_j=2000.2, note="GPU energy (Zeus)")

    bench = Bench(lambda t: 300.0)
    meter = EnergyMeter(lambda: bench, interval_s=1.0, clock=bench.clock, external_factory=lambda n: Zeus()).open()  # type: ignore[arg-type, return-value]
    meter.sleep = bench.sleep
    meter.start()
    bench.sleep(10.0)
    r = meter.stop(WindowWork(1000, 0, 10, []))
    meter.close()
    # 2000.2 J over the 10.001 s window: 200 W; 2.0002 J per output token, 200.02 J per request.
    assert r.source == "zeus" and r.energy_j == 2000.2
    assert r.mean_power_w == pytest.approx(200.0, abs=0.001)
    assert r.j_per_output_token == pytest.approx(2.0002) and r.j_per_request == pytest.approx(200.02)
    assert r.external is not None and r.external.note == "GPU energy (Zeus)"


def test_no_thermal_floor_only_sleeps_and_keeps_the_pre_load_idle():
    bench = Bench(lambda t: 50.0)
    slept: list[float] = []
    meter_on(bench).loaded_idle(0.0, slept.append)
    assert slept == [0.0] and bench.reads == []
    off = EnergyMeter(lambda: bench, interval_s=1.0)  # never opened: no backend
    off.loaded_idle(2.0, slept.append)
    assert slept == [0.0, 2.0]


def test_a_baseline_without_a_reading_fails_and_a_disabled_one_says_so(tmp_path: Path):
    class Mute(Bench):
        def read(self, index: int) -> Sample:
            raise RuntimeError("GPU is lost")

    meter = meter_on(Mute(lambda t: 50.0))
    with pytest.raises(BaselineFailed, match=r"loaded idle power: no power reading from GPU 0 \(H100\)"):
        meter.loaded_idle(4.0, meter.sleep)
    quiet = meter_on(Bench(lambda t: 50.0))
    quiet.measure_baseline(BaselineConfig(enabled=False), tmp_path)
    quiet.start()
    r = quiet.stop(WORK)
    assert r.baseline is None and r.adjusted_energy_j is None


def test_the_sampler_sweeps_every_device_at_its_interval():
    bench = Bench(lambda t: 75.0)
    sampler = Sampler(bench, interval_s=0.25, clock=bench.clock)  # type: ignore[arg-type]
    for _ in range(3):
        sampler.sample_once()
        bench.sleep(0.25)
    assert [s.time_s for s in sampler.samples] == pytest.approx([1000.0, 1000.25, 1000.5])
    assert [(s.device, s.power_w, s.temperature_c) for s in sampler.samples] == [(0, 75.0, 50.0)] * 3


def test_an_averaged_reading_is_moved_back_half_a_second():
    assert PowerReading("average_1s").shift_s == 0.5
    assert PowerReading("instant").shift_s == 0.0


# --- the idle baseline's cache and its drift check ----------------------------------------


def test_a_measured_baseline_sums_its_devices_and_has_no_age():
    idle = FakeIdle([60.0, 62.5])
    r = resolve_baseline(idle, BaselineConfig(strategy="fresh", duration_seconds=12), None, now=lambda: 500.0)
    assert (r.source, r.power_w, r.total_power_w, r.duration_s) == ("measured", [60.0, 62.5], 122.5, 12.0)
    assert (r.measured_at, r.age_s) == (500.0, 0.0)
    assert idle.durations == [12.0]


@pytest.mark.parametrize(("age_s", "source"), [(7199.0, "cache"), (7200.0, "cache"), (7201.0, "measured")])
def test_a_cached_baseline_is_reused_up_to_its_ttl(tmp_path: Path, age_s: float, source: str):
    config = BaselineConfig(strategy="cached", duration_seconds=10, cache_ttl_seconds=7200)
    resolve_baseline(FakeIdle([60.0]), config, tmp_path, now=lambda: 1000.0)
    idle = FakeIdle([70.0])
    r = resolve_baseline(idle, config, tmp_path, now=lambda: 1000.0 + age_s)
    assert r.source == source
    if source == "cache":
        assert (r.power_w, r.age_s, r.measured_at) == ([60.0], age_s, 1000.0) and idle.durations == []
    else:
        assert (r.power_w, r.age_s) == ([70.0], 0.0) and idle.durations == [10.0]


@pytest.mark.parametrize(
    ("check_w", "source"),
    [(110.0, "cache_validated"), (109.0, "cache_validated"), (111.0, "remeasured_after_drift"),
     (89.0, "remeasured_after_drift"), (90.0, "cache_validated")],
)  # fmt: skip
def test_a_validated_baseline_is_remeasured_when_it_drifted_over_the_threshold(
    tmp_path: Path, check_w: float, source: str
):
    # Cached 100 W; the spot check every 2nd use reads check_w: drift |check - 100| / 100 against 10%.
    config = BaselineConfig(strategy="validated", duration_seconds=10, validation_interval=2, drift_threshold=0.10)
    resolve_baseline(FakeIdle([100.0]), config, tmp_path, now=lambda: 1000.0)  # measured: use 1
    check = FakeIdle([check_w])
    r = resolve_baseline(check, config, tmp_path, now=lambda: 1010.0)  # use 2: spot-checked
    assert r.source == source
    assert check.durations[0] == SPOT_CHECK_S == 5.0
    if source == "remeasured_after_drift":
        assert r.power_w == [check_w] and check.durations == [5.0, 10.0] and r.age_s == 0.0
    else:
        assert r.power_w == [100.0] and check.durations == [5.0] and r.age_s == 10.0


def test_a_validated_baseline_is_checked_only_every_nth_use(tmp_path: Path):
    config = BaselineConfig(strategy="validated", duration_seconds=10, validation_interval=3)
    sources = []
    for _ in range(7):
        sources.append(resolve_baseline(FakeIdle([100.0]), config, tmp_path, now=lambda: 1000.0).source)
    # Use 1 measures; uses 3 and 6 are spot-checked; the others come from the cache.
    assert sources == ["measured", "cache", "cache_validated", "cache", "cache", "cache_validated", "cache"]


def test_idle_samples_cover_the_duration_at_the_interval():
    bench = Bench(lambda t: 40.0)
    meter = meter_on(bench, interval_s=0.5)
    assert meter.idle_power_w(2.0) == pytest.approx([40.0])
    assert bench.reads == pytest.approx([1000.0, 1000.5, 1001.0, 1001.5])  # 2 s / 0.5 s = 4 samples
    brief = Bench(lambda t: 40.0)
    meter_on(brief, interval_s=1.0).idle_power_w(0.4)
    assert brief.reads == [1000.0]  # less than one interval: still one sample, never none


def test_an_idle_baseline_without_a_reading_says_so():
    class Mute(Bench):
        def read(self, index: int) -> Sample:
            raise RuntimeError("GPU is lost")

    with pytest.raises(BaselineFailed, match=r"^idle baseline: no power reading from GPU 0 \(H100\); cannot take"):
        meter_on(Mute(lambda t: 50.0)).idle_power_w(3.0)


def test_a_disabled_baseline_is_said_in_the_report(tmp_path: Path):
    meter = meter_on(Bench(lambda t: 50.0))
    meter.measure_baseline(BaselineConfig(enabled=False), tmp_path)
    meter.start()
    assert meter.stop(WORK).baseline_note == "no baseline: baseline.enabled is false"


def test_the_sampler_thread_waits_out_the_rest_of_each_interval():
    class Slow(Bench):
        def read(self, index: int) -> Sample:
            self.t += 0.3  # each sweep takes 0.3 s of the meter's clock
            return super().read(index)

    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            self.set()  # one sweep is enough
            return True

    bench = Slow(lambda t: 75.0)
    sampler = Sampler(bench, interval_s=1.0, clock=bench.clock)  # type: ignore[arg-type]
    sampler._stop = Stop()
    sampler.start()
    sampler.stop()
    assert waits == pytest.approx([0.7])  # 1 s interval - 0.3 s spent reading
    assert len(sampler.samples) == 1


# --- prefill and decode ------------------------------------------------------------------


def split(spans: list[tuple[float, float, float]], **extra: object):
    flat = [Sample(round(i * 0.1, 9), 0, 500.0) for i in range(101)]
    return energy_report(["H100"], flat, start_mj=[0], end_mj=[5_000_000], window=(0.0, 10.0), interval_s=0.1,
                         work=WindowWork(10, 10, len(spans), spans, **extra))  # type: ignore[arg-type]  # fmt: skip


def test_prefill_and_decode_notes_say_how_or_why_not():
    # Prefills of 0.5 s (exactly 5 samples of 100 ms) at 500 W: 250 J each; decode 4.5 s each.
    r = split([(0.0, 0.5, 5.0), (5.0, 5.5, 10.0)])
    assert (r.prefill_energy_j, r.decode_energy_j) == pytest.approx((500.0, 4500.0))
    assert r.prefill_decode_note == (
        "power trace over each batch's wait for its first token (static batches; prefills of at least 0.50 s "
        "against 100 ms samples)"
    )
    # The second batch's prefill is 0.3 s (5.0 -> 5.3 s): too short, whatever the first.
    short = split([(0.0, 1.0, 5.0), (5.0, 5.3, 10.0)])
    assert short.prefill_energy_j is None and short.decode_energy_j is None
    assert short.prefill_decode_note == (
        "not measured: the shortest prefill (300 ms) spans fewer than 5 samples of 100 ms"
    )
    assert split([]).prefill_decode_note == "no batch was measured"
    assert split([(0.0, 1.0, 10.0)], static_batches=False).prefill_decode_note == (
        "not measured: continuous batching interleaves one request's prefill with others' decode"
    )
    averaged = energy_report(["H100"], [Sample(0.0, 0, 500.0)], start_mj=[0], end_mj=[5_000_000], window=(0.0, 10.0),
                             interval_s=0.1, work=WindowWork(1, 1, 1, [(0.0, 1.0, 10.0)]),
                             readings=[PowerReading("average_1s")])  # fmt: skip
    assert averaged.prefill_decode_note == (
        "not measured: the power readings are one-second averages, too coarse for a prefill"
    )


# --- edges of the energy report ------------------------------------------------------------


def one_device(watts: float, start_mj: int | None, end_mj: int | None, window: tuple[float, float] = (0.0, 10.0)):
    flat = [Sample(round(i * 0.1, 9), 0, watts) for i in range(101)]
    return energy_report(["H100"], flat, start_mj=[start_mj], end_mj=[end_mj], window=window, interval_s=0.1, work=WORK)


def test_a_small_disagreement_is_judged_on_the_energies_themselves():
    # 10 W over 10 s: a 100 J trace. Counter 95.2 J: 4.8 / 95.2 = 5.04%: flagged (with 1 J added
    # to each side it would be 4.99%). Counter 95.3 J: 4.7 / 95.3 = 4.93%: not flagged.
    assert [f.code for f in one_device(10.0, 0, 95_200).flags] == ["counter_trace_disagree"]
    assert one_device(10.0, 0, 95_300).flags == []


def test_a_counter_missing_at_one_end_is_no_counter():
    for start, end in ((None, 5_000), (5_000, None)):
        r = one_device(10.0, start, end)
        assert r.source == "nvml_power_trace" and r.energy_j == pytest.approx(100.0)
        assert r.devices[0].energy_j is None and r.flags == []


def test_only_the_devices_with_counters_make_the_source_a_counter():
    r = report(start_mj=[None, 7_000_000], end_mj=[None, 7_500_000])  # device 0 has no counter, device 1 has
    assert r.source == "nvml_power_trace"
    assert r.energy_j == pytest.approx(2010.0 + 500.0)
    assert r.energy_uncertainty_j is None and r.counter_aligned is None


def test_a_device_without_samples_adds_nothing_to_the_trace():
    zero_only = [s for s in two_devices() if s.device == 0]
    r = energy_report(["H100", "H100"], zero_only, start_mj=[1_000_000, 7_000_000], end_mj=[3_000_000, 7_500_000],
                      window=(0.0, 10.0), interval_s=0.1, work=WORK)  # fmt: skip
    assert r.energy_j == pytest.approx(2500.0)  # both counters
    assert [d.trace_energy_j for d in r.devices] == [pytest.approx(2010.0), None]
    assert r.trace_energy_j == pytest.approx(2010.0)
    assert [d.mean_power_w for d in r.devices][1] is None
    unavailable = energy_report(["H100", "H100"], zero_only, start_mj=[1, None], end_mj=[2, None], window=(0.0, 10.0),
                                interval_s=0.1, work=WORK)  # fmt: skip
    assert unavailable.energy_j is None and len(unavailable.devices) == 2


def test_a_zero_length_window_has_no_mean_power():
    r = one_device(10.0, 0, 1_000, window=(5.0, 5.0))
    assert r.energy_j == pytest.approx(1.0)
    assert r.mean_power_w is None and r.energy_uncertainty_j is None


def test_the_peak_is_where_the_sum_is_highest_not_the_last_sweep():
    # Device 0 at 400 W from 3.0 to 3.9 s, 100 W otherwise; device 1 at 50 W: the peak is 450 W.
    zero = [Sample(round(i * 0.1, 9), 0, 400.0 if 30 <= i < 40 else 100.0) for i in range(101)]
    one = [Sample(round(i * 0.1 + 0.003, 9), 1, 50.0) for i in range(100)]
    r = energy_report(["H100", "H100"], zero + one, start_mj=[0, 0], end_mj=[1_300_000, 500_000], window=(0.0, 10.0),
                      interval_s=0.1, work=WORK)  # fmt: skip
    assert r.peak_power_w == pytest.approx(450.0)


def test_an_external_figure_over_a_short_window_and_without_a_baseline():
    nvml = report()
    zeus = SimpleNamespace(name="zeus", polls_gpu=False)
    r = with_external(nvml, zeus, ExternalEnergy(energy_j=100.0), WORK, 0.5)  # type: ignore[arg-type]
    assert r.mean_power_w == pytest.approx(200.0)  # 100 J / 0.5 s
    assert r.adjusted_energy_j is None  # no baseline to subtract
    cc = with_external(nvml, SimpleNamespace(name="codecarbon", polls_gpu=True), ExternalEnergy(energy_j=100.0), WORK,
                       10.0)  # type: ignore[arg-type]  # fmt: skip
    assert cc.baseline_note is None  # no baseline was taken, so none was left out
    assert cc.prefill_decode_note == "not measured: CodeCarbon polled the GPUs, so llem kept no power trace"
    with_baseline = with_external(report(baseline=baseline()), SimpleNamespace(name="codecarbon", polls_gpu=True),
                                  ExternalEnergy(energy_j=100.0), WORK, 10.0)  # type: ignore[arg-type]  # fmt: skip
    assert with_baseline.baseline_note == (
        "not subtracted: the baseline is GPU idle power, CodeCarbon's total covers GPU, CPU and RAM"
    )


# --- which power reading a device gives ------------------------------------------------------


class FakeNvml:
    """The slice of pynvml that _averages_power_usage reads."""

    class NVMLError(Exception):
        pass

    def __init__(self, arch: int | None, ampere: int | None = 7) -> None:
        self.arch = arch
        self.handle = object()
        if ampere is not None:
            self.NVML_DEVICE_ARCH_AMPERE = ampere

    def nvmlDeviceGetArchitecture(self, handle: object) -> int:
        if handle is not self.handle:
            raise TypeError("not a device handle")
        if self.arch is None:
            raise self.NVMLError("Not Supported")
        return self.arch


@pytest.mark.parametrize(
    ("arch", "name", "averaged"),
    [
        (7, "NVIDIA A10", True),  # Ampere: a one-second average
        (9, "NVIDIA H100 80GB HBM3", True),  # Hopper
        (6, "Tesla T4", False),  # Turing: instantaneous
        (7, "NVIDIA A100-SXM4-80GB", False),  # GA100 reads instantaneous power
        (7, "NVIDIA A30", False),
        (7, "NVIDIA A800 80GB PCIe", False),
        (None, "NVIDIA H100", False),  # unknown: as the driver documents the call
    ],
)
def test_which_devices_average_their_power_reading(arch: int | None, name: str, averaged: bool):
    from llem_agent.energy.nvml import _averages_power_usage

    nvml = FakeNvml(arch)
    assert _averages_power_usage(nvml, nvml.handle, name) is averaged


def test_the_ampere_number_comes_from_the_driver_where_it_has_one():
    from llem_agent.energy.nvml import _averages_power_usage

    later = FakeNvml(arch=7, ampere=8)  # a driver numbering architectures otherwise
    assert _averages_power_usage(later, later.handle, "NVIDIA A10") is False
    old = FakeNvml(arch=7, ampere=None)  # no constant: Ampere is 7
    assert _averages_power_usage(old, old.handle, "NVIDIA A10") is True


def test_a_backend_that_does_not_say_reads_instantaneous_power_at_gpu_scope():
    from llem_agent.energy.nvml import _power_readings

    assert _power_readings(Bench(lambda t: 1.0)) == [PowerReading("instant", "gpu", "gpu")]

    class Says(Bench):
        def power_readings(self) -> list[PowerReading]:
            return [PowerReading("average_1s", "module", "gpu")]

    assert _power_readings(Says(lambda t: 1.0)) == [PowerReading("average_1s", "module", "gpu")]


# --- the sampler's sweeps --------------------------------------------------------------------


class Fast(Bench):
    """A device with a fast power-only read beside its full read; strict about its index."""

    def read_power(self, index: int) -> float:
        return [self.power(self.t)][index]

    def read(self, index: int) -> Sample:
        self.reads.append(self.t)
        return Sample(0.0, 99, [self.power(self.t)][index], 50.0)  # the device number is the sampler's to set


def test_full_readings_about_once_a_second_and_power_alone_between():
    bench = Fast(lambda t: 80.0)
    every_tenth = Sampler(bench, interval_s=0.1, clock=bench.clock)  # type: ignore[arg-type]
    for _ in range(11):
        every_tenth.sample_once()
        bench.sleep(0.1)
    assert [s.temperature_c is not None for s in every_tenth.samples] == [True] + [False] * 9 + [True]
    assert [s.device for s in every_tenth.samples] == [0] * 11
    assert [s.power_w for s in every_tenth.samples] == [80.0] * 11
    assert [s.time_s for s in every_tenth.samples] == pytest.approx([1000.0 + 0.1 * i for i in range(11)])
    forced = Sampler(bench, interval_s=0.1, clock=bench.clock)  # type: ignore[arg-type]
    forced.sample_once(full=False)  # sweep 0, told power alone
    forced.sample_once(full=True)  # sweep 1, told everything
    assert [s.temperature_c for s in forced.samples] == [None, 50.0]
    each = Sampler(bench, interval_s=1.0, clock=bench.clock)  # type: ignore[arg-type]
    each.sample_once()
    each.sample_once()
    assert [s.temperature_c for s in each.samples] == [50.0, 50.0]  # at 1 s intervals every reading is full
    for interval in (0.0, -1.0):  # never a division by zero: every reading full
        odd = Sampler(bench, interval_s=interval, clock=bench.clock)  # type: ignore[arg-type]
        odd.sample_once()
        odd.sample_once()
        assert [s.temperature_c for s in odd.samples] == [50.0, 50.0]


def test_the_sampler_thread_is_named_and_never_keeps_the_agent_alive():
    thread = Sampler(Bench(lambda t: 1.0), interval_s=0.1)._thread  # type: ignore[arg-type]
    assert (thread.name, thread.daemon) == ("llem-nvml-sampler", True)


def test_the_window_is_bracketed_by_two_full_readings(tmp_path: Path):
    bench = Fast(lambda t: 300.0)
    meter = EnergyMeter(lambda: bench, interval_s=0.1, clock=bench.clock, external_factory=lambda n: Quiet()).open()  # type: ignore[arg-type, return-value]
    meter.sleep = bench.sleep
    meter.start()
    bench.sleep(10.0)
    meter.stop(WORK)
    assert [s.temperature_c for s in meter.samples] == [50.0, 50.0]


def test_loaded_idle_of_an_even_number_of_samples(tmp_path: Path):
    bench = Bench(lambda t: 50.0)
    meter = meter_on(bench)
    meter.measure_baseline(BaselineConfig(strategy="fresh", duration_seconds=5), tmp_path)
    start = bench.t
    bench.power = lambda t: 150.0 - 10.0 * (t - start)
    # 10 samples at 0..9 s, 150 ... 60 W: the second half from 4.5 s: 100 90 80 70 60, mean 80 W
    # (from 4 s on it would be 85 W).
    meter.loaded_idle(10.0, bench.sleep)
    meter.start()
    r = meter.stop(WORK)
    assert r.baseline is not None and r.baseline.loaded_power_w == pytest.approx([80.0])
    assert r.baseline.loaded_duration_s == pytest.approx(5.0)


def test_notes_and_split_at_a_sampling_interval_that_is_not_round():
    # Samples every 0.4004 s: a prefill must last 5 x 0.4004 = 2.002 s to be measured.
    trace = [Sample(round(i * 0.4004, 9), 0, 500.0) for i in range(26)]
    common = {"start_mj": [0], "end_mj": [5_000_000], "window": (0.0, 10.0), "interval_s": 0.4004}
    short = energy_report(["H100"], trace, work=WindowWork(1, 1, 1, [(0.0, 1.0, 10.0)]), **common)  # type: ignore[arg-type]
    assert (
        short.prefill_decode_note == "not measured: the shortest prefill (1000 ms) spans fewer than 5 samples of 400 ms"
    )
    long = energy_report(["H100"], trace, work=WindowWork(1, 1, 1, [(0.0, 2.5, 10.0)]), **common)  # type: ignore[arg-type]
    assert long.prefill_decode_note is not None and long.prefill_decode_note.endswith(
        "prefills of at least 2.50 s against 400 ms samples)"
    )
    assert long.prefill_energy_j == pytest.approx(1250.0)  # 2.5 s x 500 W


def test_each_device_says_what_its_counter_and_trace_cover():
    r = report(readings=[PowerReading("instant", "module", "module"), PowerReading("instant", "gpu", "gpu")])
    assert [(d.counter_scope, d.trace_scope) for d in r.devices] == [("module", "module"), ("gpu", "gpu")]


def test_the_peak_groups_each_sweep_from_the_windows_own_start():
    from llem_agent.energy.report import _peak_total_power

    # The window opens at 0.025 s; device 1 is read 40 ms after device 0 in each sweep. Both
    # peak in sweep 4 only (300 + 50 W); counted from anywhere but the window's start, device 1's
    # reading of sweep 4 would fall in another sweep's bucket.
    zero = [Sample(0.025 + i * 0.1, 0, 300.0 if i == 4 else 100.0) for i in range(10)]
    one = [Sample(0.065 + i * 0.1, 1, 50.0 if i == 4 else 0.0) for i in range(10)]
    assert _peak_total_power(zero + one, 0.025, 0.1) == pytest.approx(350.0)
    # No interval: one bucket, each device's last reading.
    flat = [Sample(0.0, 0, 100.0), Sample(1.0, 0, 300.0), Sample(0.5, 1, 50.0)]
    assert _peak_total_power(flat, 0.0, 0.0) == pytest.approx(350.0)
    assert _peak_total_power([], 0.0, 0.1) is None


# --- the baseline cache's file ---------------------------------------------------------------


def test_the_baseline_cache_file_is_keyed_by_the_devices_and_readable(tmp_path: Path):
    config = BaselineConfig(strategy="cached", duration_seconds=10)
    resolve_baseline(FakeIdle([60.0, 61.0]), config, tmp_path, now=lambda: 1000.0)
    text = (tmp_path / "baselines.json").read_text()
    assert text.startswith('{\n  "GPU-0|GPU-1": {\n    "power_w": [')


def test_a_damaged_cache_entry_is_skipped_and_the_rest_still_used(tmp_path: Path):
    import json

    good = {"power_w": [60.0], "measured_at": 1000.0, "uses": 0}
    (tmp_path / "baselines.json").write_text(json.dumps({"GPU-9": {"power_w": "?"}, "GPU-0": good}))
    config = BaselineConfig(strategy="cached", duration_seconds=10)
    assert resolve_baseline(FakeIdle([70.0]), config, tmp_path, now=lambda: 1010.0).source == "cache"
    (tmp_path / "baselines.json").write_text("[1, 2]")  # not a mapping at all
    r = resolve_baseline(FakeIdle([70.0]), config, tmp_path, now=lambda: 1010.0)
    assert (r.source, r.power_w) == ("measured", [70.0])


def test_fresh_never_reads_the_cache(tmp_path: Path):
    import json

    good = {"power_w": [60.0], "measured_at": 1000.0, "uses": 0}
    (tmp_path / "baselines.json").write_text(json.dumps({"GPU-0": good}))
    r = resolve_baseline(FakeIdle([70.0]), BaselineConfig(strategy="fresh", duration_seconds=10), tmp_path,
                         now=lambda: 1010.0)  # fmt: skip
    assert (r.source, r.power_w) == ("measured", [70.0])


def test_a_zero_watt_cached_baseline_is_validated_without_dividing_by_zero(tmp_path: Path):
    config = BaselineConfig(strategy="validated", duration_seconds=10, validation_interval=2)
    resolve_baseline(FakeIdle([0.0]), config, tmp_path, now=lambda: 1000.0)
    assert resolve_baseline(FakeIdle([5.0]), config, tmp_path, now=lambda: 1001.0).source == "cache_validated"


def test_the_replay_fixture_holds_the_counters_the_window_was_read_between():
    bench = Bench(lambda t: 300.0)
    meter = EnergyMeter(lambda: bench, interval_s=1.0, clock=bench.clock, external_factory=lambda n: Quiet()).open()  # type: ignore[arg-type, return-value]
    meter.sleep = bench.sleep
    meter.start()
    bench.sleep(10.0)
    r = meter.stop(WindowWork(7, 3, 1, [(0.0, 1.0, 10.0)]))
    raw = meter.raw_trace()
    assert raw is not None
    # The fixture replays to the same energy: its two counter reads are the window's delta.
    assert raw["end_mj"][0] - raw["start_mj"][0] == round(r.energy_j * 1000)  # type: ignore[operator]
    assert raw["counter_step_s"] == pytest.approx(STEP_POLL_S)
    assert raw["window"][1] - raw["window"][0] == pytest.approx(10.001)
    assert raw["work"] == {"output_tokens": 7, "input_tokens": 3, "n_requests": 1,
                           "batch_spans": [[0.0, 1.0, 10.0]], "static_batches": True}  # fmt: skip
