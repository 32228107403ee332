"""Energy through an NVML fake that replays recorded traces (counters and power samples)."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llem_agent.energy import EnergyMeter, NvmlUnavailable, Sampler, WindowWork, energy_report
from llem_agent.telemetry import Sample, integrate_j

WORK = WindowWork(output_tokens=100, input_tokens=50, n_requests=10, batch_spans=[(0.0, 2.0, 10.0)])


def trace(device: int, powers: list[float], step: float = 0.1, start: float = 0.0, **extra: float) -> list[Sample]:
    """A recorded trace: one sample every ``step`` seconds."""
    fields = {"temperature_c": 60.0, "memory_used_mb": 1000.0, "memory_total_mb": 80000.0,
              "sm_utilisation_pct": 90.0, "sm_clock_mhz": 1980.0, "throttle_reasons": 0} | extra  # fmt: skip
    return [Sample(start + i * step, device, p, **fields) for i, p in enumerate(powers)]  # type: ignore[arg-type]


def flat(device: int, watts: float, seconds: float = 10.0, step: float = 0.1, **extra: float) -> list[Sample]:
    return trace(device, [watts] * (round(seconds / step) + 1), step, **extra)


def report(samples, start_mj, end_mj, *, names=("H100",), window=(0.0, 10.0), work=WORK):
    return energy_report(
        list(names), samples, start_mj=start_mj, end_mj=end_mj, window=window, interval_s=0.1, work=work
    )


def codes(r) -> set[str]:
    return {f.code for f in r.flags}


def test_counter_energy_with_the_trace_beside_it_and_every_denominator():
    r = report(flat(0, 300.0), [1_000_000], [4_000_000])  # counter: 3000 J over 10 s
    assert r.source == "nvml_total_energy"
    assert r.energy_j == pytest.approx(3000.0)
    assert r.trace_energy_j == pytest.approx(3000.0)
    assert (r.j_per_output_token, r.j_per_token, r.j_per_request) == pytest.approx((30.0, 20.0, 300.0))
    assert r.mean_power_w == pytest.approx(300.0)
    assert r.peak_power_w == pytest.approx(300.0)
    assert r.devices[0].mean_power_w == pytest.approx(300.0)
    assert codes(r) == set()


def test_prefill_and_decode_attribution_follows_the_batch_timeline():
    # 500 W up to 1.9 s, 200 W from 2.0 s; the first token arrives at 2.0 s.
    # Prefill: 1.9 s x 500 W + the 1.9-2.0 s ramp (500+200)/2 x 0.1 s = 985 J; decode: 8 s x 200 W.
    powers = [500.0] * 20 + [200.0] * 81
    samples = trace(0, powers)
    r = report(samples, [0], [2_585_000])
    assert r.prefill_energy_j == pytest.approx(985.0)
    assert r.decode_energy_j == pytest.approx(1600.0)
    assert r.prefill_energy_j + r.decode_energy_j == pytest.approx(r.trace_energy_j)


def test_two_devices_sum_and_peak_is_of_the_summed_power():
    samples = flat(0, 300.0) + flat(1, 100.0)
    r = report(samples, [0, 0], [3_000_000, 1_000_000], names=("H100", "H100"))
    assert r.energy_j == pytest.approx(4000.0)
    assert r.peak_power_w == pytest.approx(400.0)
    assert [d.energy_j for d in r.devices] == pytest.approx([3000.0, 1000.0])


def test_device_without_counter_uses_the_integrated_trace():
    r = report(flat(0, 70.0), [None], [None], names=("T4",))
    assert r.source == "nvml_power_trace"
    assert r.energy_j == pytest.approx(700.0)
    assert r.devices[0].energy_j is None


def test_counter_reset_falls_back_to_the_trace_and_is_flagged():
    r = report(flat(0, 300.0), [9_000_000], [1_000])
    assert r.source == "nvml_power_trace"
    assert r.energy_j == pytest.approx(3000.0)
    assert "counter_reset" in codes(r)


def test_counter_reset_without_any_trace_is_not_reported_as_energy():
    r = report([], [9_000_000], [1_000])
    assert r.energy_j is None
    assert "went backwards" in (r.unavailable_reason or "")


@pytest.mark.parametrize(
    ("samples", "start_mj", "end_mj", "window", "flag"),
    [
        (flat(0, 300.0, seconds=3.0), [0], [900_000], (0.0, 3.0), "short_window"),
        ([s for s in flat(0, 300.0) if not 4.0 < s.time_s < 5.0], [0], [3_000_000], (0.0, 10.0), "sampling_gap"),
        (flat(0, 300.0, throttle_reasons=0x40), [0], [3_000_000], (0.0, 10.0), "throttled"),
        (flat(0, 300.0, throttle_reasons=0x4), [0], [3_000_000], (0.0, 10.0), None),  # the power cap is routine
        (trace(0, [300.0] * 101, temperature_c=0), [0], [3_000_000], (0.0, 10.0), None),
        (flat(0, 300.0), [0], [3_300_000], (0.0, 10.0), "counter_trace_disagree"),
    ],
)
def test_each_validity_flag(samples, start_mj, end_mj, window, flag):
    r = report(samples, start_mj, end_mj, window=window)
    assert codes(r) == ({flag} if flag else set())


def test_temperature_drift_and_idle_throttle_reasons():
    warming = [Sample(i * 0.1, 0, 300.0, 50.0 + i * 0.2, 1.0, 2.0, 90.0, 1980.0, 0x1) for i in range(101)]
    r = report(warming, [0], [3_000_000])
    assert codes(r) == {"temperature_drift"}  # still rising at the end; 0x1 (GPU idle) is not a throttle event


@given(
    st.lists(st.floats(min_value=0.0, max_value=1000.0), min_size=2, max_size=60),
    st.floats(min_value=0.01, max_value=1.0),
)
def test_integration_is_additive_and_bounded(powers, step):
    samples = trace(0, powers, step)
    end = (len(powers) - 1) * step
    mid = end / 3
    whole = integrate_j(samples, 0.0, end)
    assert whole == pytest.approx(integrate_j(samples, 0.0, mid) + integrate_j(samples, mid, end), abs=1e-6)
    assert min(powers) * end - 1e-6 <= whole <= max(powers) * end + 1e-6


class ReplayNvml:
    """A fake device: a counter rising at ``watts`` and readings of that power."""

    def __init__(self, names: list[str], watts: float, counter: bool = True) -> None:
        self.names, self.watts, self.counter = names, watts, counter
        self.start = time.monotonic()
        self.readers: set[int] = set()
        self.closed = False

    def device_names(self) -> list[str]:
        return self.names

    def device_uuids(self) -> list[str]:
        return [f"GPU-{i}" for i in range(len(self.names))]

    def total_energy_mj(self, index: int) -> int:
        if not self.counter:
            raise NvmlUnavailable(f"GPU {index} has no total-energy counter")
        return int((time.monotonic() - self.start) * self.watts * 1000)

    def read(self, index: int) -> Sample:
        self.readers.add(threading.get_ident())
        return Sample(0.0, index, self.watts, 55.0, 100.0, 1000.0, 80.0, 1500.0, 0)

    def facts(self):
        from llem_agent.contract import GpuFacts

        return [GpuFacts(index=i, name=n, uuid=f"GPU-{i}") for i, n in enumerate(self.names)]

    def close(self) -> None:
        self.closed = True


def test_meter_end_to_end_with_one_sampler_thread():
    fake = ReplayNvml(["A100", "A100"], 250.0)
    meter = EnergyMeter(lambda: fake, interval_s=0.01).open()
    meter.start()
    time.sleep(0.3)
    r = meter.stop(WindowWork(10, 10, 2, [(0.0, 0.05, 0.3)]))
    meter.close()
    assert fake.closed
    assert r.source == "nvml_total_energy"
    assert r.energy_j == pytest.approx(2 * 250.0 * 0.3, rel=0.15)
    assert r.trace_energy_j == pytest.approx(r.energy_j, rel=0.15)
    assert r.n_samples >= 2 * 10
    assert len(fake.readers) == 2  # the sampler thread, plus the bracketing reads of the caller
    assert "short_window" in codes(r)


def test_no_nvml_gives_null_energy_with_reason():
    def unavailable():
        raise NvmlUnavailable("NVML unavailable: Driver Not Loaded")

    meter = EnergyMeter(unavailable).open()
    meter.start()
    r = meter.stop(WORK)
    assert r.energy_j is None
    assert r.unavailable_reason == "NVML unavailable: Driver Not Loaded"


def test_sampler_survives_a_failing_read():
    class Flaky(ReplayNvml):
        calls = 0

        def read(self, index: int) -> Sample:
            self.calls += 1
            if self.calls % 3 == 0:
                raise RuntimeError("transient NVML error")
            return super().read(index)

    sampler = Sampler(Flaky(["X"], 100.0), interval_s=0.01)
    sampler.start()
    time.sleep(0.1)
    samples = sampler.stop()
    assert len(samples) >= 3


def test_meter_baseline_then_adjusted_energy(tmp_path):
    from llem_agent.contract import BaselineConfig

    meter = EnergyMeter(lambda: ReplayNvml(["L4"], 40.0), interval_s=0.01).open()
    meter.sleep = lambda s: None
    meter.measure_baseline(BaselineConfig(strategy="cached", duration_seconds=5), tmp_path)
    meter.start()
    time.sleep(0.2)
    r = meter.stop(WindowWork(1, 1, 1, [(0.0, 0.01, 0.2)]))
    assert r.baseline is not None
    assert r.baseline.power_w == pytest.approx([40.0])
    assert r.adjusted_energy_j == pytest.approx(0.0, abs=2.0)  # all of the window's power is idle power
    assert (tmp_path / "baselines.json").exists()
