"""The simulated NVML (llem run --simulate-gpus): its power model, its counter and readings worked
out by hand, and the harness's energy arithmetic checked against its ground truth (the ledger)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from llem_agent.contract import BaselineConfig, EnergyReport
from llem_agent.contract.simulation import (
    PowerProfile,
    SimulatedDevice,
    SimulatedFault,
    SimulatedGpus,
    is_simulated_uuid,
    simulated_uuid,
)
from llem_agent.energy import STEP_POLL_S, DeviceLost, EnergyMeter, NvmlUnavailable, WindowWork
from llem_agent.energy.simledger import ledger
from llem_agent.energy.simpower import PowerCurve
from llem_agent.energy.simulated import COUNTER_OFFSET_MJ, GPU_IDLE, SW_THERMAL_SLOWDOWN, SimulatedNvml

UUID0, UUID1 = simulated_uuid(0), simulated_uuid(1)


class Clock:
    """A fake monotonic clock that only ``sleep`` moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def spec(n: int = 1, faults: tuple[SimulatedFault, ...] = (), **profile: Any) -> SimulatedGpus:
    devices = [SimulatedDevice(index=i, uuid=simulated_uuid(i)) for i in range(n)]
    return SimulatedGpus(devices=devices, profile=PowerProfile(**profile), faults=list(faults))


# --- the power model, by hand -------------------------------------------------------------


def test_a_constant_power_integrates_to_power_times_time():
    curve = PowerCurve(0.0, 100.0, tau_s=0.25)
    assert curve.energy_j(2.0) == pytest.approx(200.0)  # 100 W for 2.0 s = 200 J
    assert curve.energy_j(-1.0) == pytest.approx(-100.0)  # before the origin the first level is held


def test_a_step_in_the_target_is_followed_with_a_first_order_lag():
    # 100 W, then from t = 1 s towards 300 W with tau = 0.5 s. One second later the power is
    # 300 - 200 e^-2 = 272.93 W, and the energy of that second 300 - 200 x 0.5 x (1 - e^-2) = 213.53 J.
    curve = PowerCurve(0.0, 100.0, tau_s=0.5)
    curve.retarget(1.0, 300.0)
    assert curve.power_w(2.0) == pytest.approx(300 - 200 * math.exp(-2))
    assert curve.power_w(2.0) == pytest.approx(272.933, abs=1e-3)
    assert curve.between_j(1.0, 2.0) == pytest.approx(213.534, abs=1e-3)
    assert curve.energy_j(2.0) == pytest.approx(100.0 + 213.534, abs=1e-3)
    assert curve.peak_w(0.0, 2.0) == pytest.approx(curve.power_w(2.0))
    assert curve.mean_w(1.0, 2.0) == pytest.approx(213.534, abs=1e-3)


def test_the_energy_is_the_integral_of_the_power_whatever_the_changes():
    curve = PowerCurve(0.0, 70.0, tau_s=0.3)
    for t, target in ((0.5, 400.0), (1.2, 110.0), (1.3, 380.0), (4.0, 90.0)):
        curve.retarget(t, target)
    steps = 60_000
    riemann = sum(curve.power_w((k + 0.5) * 6.0 / steps) for k in range(steps)) * 6.0 / steps
    assert curve.energy_j(6.0) == pytest.approx(riemann, rel=1e-6)


# --- the counter and the readings --------------------------------------------------------


def test_the_counter_is_the_exact_integral_advancing_in_steps():
    clock = Clock()
    sim = SimulatedNvml(spec(idle_w=100.0, counter_step_s=0.1), clock=clock).open()
    offset = COUNTER_OFFSET_MJ
    clock.sleep(2.05)  # 100 W x 2.0 s = 200 J at the last step (2.0 s): 200,000 mJ
    assert sim.total_energy_mj(0) == offset + 200_000
    clock.sleep(0.0499)  # still before the next step
    assert sim.total_energy_mj(0) == offset + 200_000
    clock.sleep(0.0002)  # 2.1 s: one step of 10 J more
    assert sim.total_energy_mj(0) == offset + 210_000


def test_readings_are_instantaneous_or_the_mean_of_the_last_second():
    clock = Clock()
    levels = {"idle_w": 100.0, "loaded_idle_w": 300.0, "response_s": 1e-9}
    instant = SimulatedNvml(spec(power_reading="instant", **levels), clock=clock)
    average = SimulatedNvml(spec(power_reading="average_1s", **levels), clock=clock)
    clock.sleep(5.0)
    instant.phase("load")  # the target becomes loaded idle, 300 W, at once
    average.phase("load")
    clock.sleep(0.5)  # half of the last second at 100 W and half at 300 W
    assert instant.read_power(0) == pytest.approx(300.0)
    assert average.read_power(0) == pytest.approx(200.0)
    clock.sleep(0.5)
    assert average.read_power(0) == pytest.approx(300.0)
    assert [r.kind for r in average.power_readings()] == ["average_1s"]


def test_temperature_clocks_and_reasons_follow_the_load():
    clock = Clock()
    profile = {"idle_w": 70.0, "load_w": 370.0, "ambient_c": 30.0, "c_per_w": 0.1, "thermal_s": 60.0}
    sim = SimulatedNvml(spec(response_s=1e-9, **profile), clock=clock)
    clock.sleep(100.0)
    idle = sim.read(0)
    assert idle.temperature_c == pytest.approx(37.0)  # 30 C + 0.1 C/W x 70 W
    assert (idle.sm_utilisation_pct, idle.sm_clock_mhz, idle.throttle_reasons) == (0.0, 345.0, GPU_IDLE)
    sim.phase("measure")
    sim.busy(True)
    clock.sleep(30.0)  # half of the last minute at 370 W: mean 220 W
    busy = sim.read(0)
    assert busy.temperature_c == pytest.approx(52.0)
    assert (busy.sm_utilisation_pct, busy.sm_clock_mhz, busy.throttle_reasons) == (100.0, 1980.0, 0)
    assert busy.memory_used_mb is not None and busy.memory_total_mb == pytest.approx(81559.0)


def test_simulated_devices_say_so_and_only_the_runs_are_kept():
    sim = SimulatedNvml(spec(2), only=[UUID1]).open()
    assert sim.device_uuids() == [UUID1] and is_simulated_uuid(UUID1)
    assert sim.visible_uuids() == [UUID0, UUID1]  # as NVML on a host: it sees every GPU
    (facts,) = sim.facts()
    assert (facts.name, facts.uuid, facts.driver_version) == ("llem simulated GPU (H100-like)", UUID1, "simulated")
    assert facts.power_limit_w == pytest.approx(700.0)
    given = SimulatedNvml(spec(2), only=[UUID1], visible=[UUID1])  # what a container was given
    assert given.visible_uuids() == [UUID1]
    with pytest.raises(NvmlUnavailable, match="CPU run"):
        SimulatedNvml(spec(2), only=[]).open()
    with pytest.raises(NvmlUnavailable, match="sees none of this run's GPUs"):
        SimulatedNvml(spec(2), only=[UUID1], visible=[UUID0]).open()


def test_the_agents_gpu_check_runs_against_the_simulated_nvml():
    from llem_agent.measure import GpuNotVisible, check_visible_gpus

    given = SimulatedNvml(spec(2), only=[UUID1], visible=[UUID1])
    check_visible_gpus([UUID1], given.visible_uuids(), "docker")  # sees exactly its GPU
    everything = SimulatedNvml(spec(2), only=[UUID1])  # a container that was given every GPU
    with pytest.raises(GpuNotVisible, match="not given"):
        check_visible_gpus([UUID1], everything.visible_uuids(), "docker")
    check_visible_gpus([UUID1], everything.visible_uuids(), "local")  # on the host NVML sees them all
    with pytest.raises(GpuNotVisible, match="does not see them"):
        check_visible_gpus([UUID1], SimulatedNvml(spec(2), visible=[UUID0]).visible_uuids(), "docker")


# --- the harness against the ground truth --------------------------------------------------

WINDOW_S = 5.0
INTERVAL_S = 0.1
TOKENS = 500


def simulated_run(
    *faults: SimulatedFault, window_s: float = WINDOW_S, **profile: Any
) -> tuple[EnergyReport, dict[str, Any], SimulatedNvml]:
    """The agent's phases on a fake clock, through the real meter: a 5 s fresh baseline, 1 s of
    loading, a 2 s warm-up batch, the 30 s thermal floor, then one measured batch of ``window_s``
    sampled every 100 ms (this loop stands in for the sampler thread, on the same clock)."""
    clock = Clock()
    sim = SimulatedNvml(spec(1, faults, **profile), only=[UUID0], clock=clock)
    meter = EnergyMeter(sim.open, interval_s=INTERVAL_S, clock=clock).open()
    meter.gpu.own_poller = False
    meter.sleep = clock.sleep
    sim.phase("baseline")
    meter.measure_baseline(BaselineConfig(strategy="fresh", duration_seconds=5), None)
    sim.phase("load")
    clock.sleep(1.0)
    sim.phase("warmup")
    sim.busy(True)
    clock.sleep(2.0)
    sim.busy(False)
    meter.loaded_idle(30.0, clock.sleep)
    sim.phase("measure")
    meter.start()
    sampler = meter.gpu._sampler
    assert sampler is not None
    sampler.sample_once()  # the thread's reading as the window opens
    sim.busy(True)
    for _ in range(round(window_s / INTERVAL_S)):
        clock.sleep(INTERVAL_S)
        sampler.sample_once()
    sim.busy(False)
    report = meter.stop(WindowWork(TOKENS, 100, 10, [(0.0, 0.5, window_s)]))
    meter.close()
    return report, ledger(sim, (meter.window.start, meter.window.end), TOKENS), sim


def codes(report: EnergyReport) -> set[str]:
    return {f.code for f in report.flags}


@pytest.mark.parametrize("reading", ["instant", "average_1s"])
def test_every_energy_field_equals_the_ground_truth(reading: str):
    r, book, _ = simulated_run(power_reading=reading)
    truth = book["truth"]
    assert r.source == "nvml_total_energy" and r.counter_aligned is True
    # The counter: read on its steps, so its delta is the truth between those steps to the mJ
    # (each read is truncated to a whole mJ) ...
    assert r.energy_j == pytest.approx(truth["counter_energy_j"], abs=0.002)
    # ... and the window opens and closes within a poll of a step: the truth over the window
    # itself is within the harness's own uncertainty, far inside one step of the counter.
    assert abs(r.energy_j - truth["energy_j"]) <= r.energy_uncertainty_j
    assert r.energy_uncertainty_j <= truth["peak_power_w"] * 2 * STEP_POLL_S + 0.002
    assert r.counter_step_s == pytest.approx(0.1, abs=2 * STEP_POLL_S)
    # The idle baseline before load and the loaded idle of the thermal floor's second half.
    assert r.baseline is not None and r.baseline.adjusted_with == "post_load"
    assert r.baseline.power_w == pytest.approx(truth["idle_power_w"])  # 70 W
    assert r.baseline.loaded_power_w == pytest.approx(truth["loaded_idle_power_w"])  # 110 W
    assert truth["loaded_idle_power_w"] == pytest.approx([110.0])
    assert r.adjusted_energy_j is not None and truth["adjusted_energy_j"] is not None
    assert abs(r.adjusted_energy_j - truth["adjusted_energy_j"]) <= r.energy_uncertainty_j + 1e-6
    assert r.j_per_output_token == pytest.approx(truth["j_per_output_token"], abs=r.energy_uncertainty_j / TOKENS)
    # The trace: 10 Hz samples of a power that rises with a 250 ms lag. Trapezoids miss at most
    # h^2/12 x (swing / tau) per transition (0.9 J); averaged readings, moved back half a second,
    # miss the half second of rise that falls before the window opened (at most a quarter of
    # the swing x 1 s: 67.5 J).
    swing = 380.0 - 110.0
    bound = INTERVAL_S**2 / 12 * swing / 0.25 * 2 + (swing / 4 if reading == "average_1s" else 0.0)
    assert r.trace_energy_j == pytest.approx(truth["energy_j"], abs=bound)
    assert codes(r) == set()  # no fault: no flag


def test_the_ledger_holds_every_phase_and_the_thermal_floor():
    _, book, sim = simulated_run()
    assert [p["phase"] for p in book["phases"]] == ["read", "baseline", "load", "warmup", "measure"]
    baseline = book["phases"][1]
    assert baseline["mean_power_w"] == pytest.approx([70.0])
    assert baseline["energy_j"] == pytest.approx([70.0 * 5.0])  # 5 s of idle at 70 W
    floor = book["thermal_floor"]
    assert floor["end_s"] - floor["start_s"] == pytest.approx(30.0)
    assert book["simulated"] is True and "not a measurement" in book["note"]
    assert book["window"]["batches"] == 1 and book["truth"]["counter_step_s"] == 0.1
    assert sim.armed_s == pytest.approx(book["window"]["start_s"])


def test_a_short_window_is_flagged_and_still_exact():
    r, book, _ = simulated_run(window_s=2.0)
    assert codes(r) == {"short_window"}
    assert r.energy_j == pytest.approx(book["truth"]["counter_energy_j"], abs=0.002)


FAULTS = [
    (SimulatedFault(kind="counter_reset", at_s=1.0), {"counter_reset"}, "nvml_power_trace"),
    (SimulatedFault(kind="sampling_gap", at_s=1.0, duration_s=1.0), {"sampling_gap"}, "nvml_total_energy"),
    (SimulatedFault(kind="throttling", at_s=1.0), {"throttled"}, "nvml_total_energy"),
    (SimulatedFault(kind="temperature_drift", amount=2.0), {"temperature_drift"}, "nvml_total_energy"),
    (SimulatedFault(kind="counter_bias", amount=0.10), {"counter_trace_disagree"}, "nvml_total_energy"),
    (SimulatedFault(kind="unsupported", field="energy"), set(), "nvml_power_trace"),
    (SimulatedFault(kind="unsupported", field="temperature"), set(), "nvml_total_energy"),
]


@pytest.mark.parametrize(("fault", "flags", "source"), FAULTS, ids=[f"{f.kind}-{f.field}" for f, _, _ in FAULTS])
def test_each_fault_raises_its_flag_and_only_its_flag(fault: SimulatedFault, flags: set[str], source: str):
    r, book, _ = simulated_run(fault, power_reading="instant")
    assert codes(r) == flags
    assert r.source == source
    truth = book["truth"]
    if source == "nvml_total_energy" and fault.kind != "counter_bias":
        assert abs(r.energy_j - truth["energy_j"]) <= r.energy_uncertainty_j  # the counter stays exact
    if fault.kind == "counter_bias":
        assert r.energy_j == pytest.approx(truth["counter_energy_j"] * 1.10, rel=1e-6)
    if source == "nvml_power_trace":  # no usable counter: the trace is the energy
        assert r.energy_j == pytest.approx(r.trace_energy_j)
        assert r.energy_j == pytest.approx(truth["energy_j"], abs=2.0)


def test_throttling_lowers_the_power_and_the_clocks():
    r, book, _ = simulated_run(SimulatedFault(kind="throttling"), power_reading="instant")
    assert book["truth"]["peak_power_w"] == pytest.approx(380.0 * 0.8, rel=1e-3)
    assert r.peak_power_w == pytest.approx(304.0, rel=1e-3)
    clock = Clock()
    sim = SimulatedNvml(spec(1, (SimulatedFault(kind="throttling", at_s=1.0),)), clock=clock)
    sim.phase("measure")
    sim.busy(True)
    clock.sleep(0.5)
    assert (sim.read(0).throttle_reasons, sim.read(0).sm_clock_mhz) == (0, 1980.0)  # not yet
    clock.sleep(1.0)
    assert (sim.read(0).throttle_reasons, sim.read(0).sm_clock_mhz) == (SW_THERMAL_SLOWDOWN, 1980.0 * 0.8)


def test_a_lost_device_fails_the_run_in_one_line_and_a_gap_does_not():
    # A GPU that falls off the bus mid-window never comes back: the meter raises DeviceLost (the
    # run fails, error.json's type) instead of reporting a trace held flat since the last reading.
    # A sampling gap of the same second is a transient failure: the window is measured and flagged.
    with pytest.raises(DeviceLost) as caught:
        simulated_run(SimulatedFault(kind="device_lost", at_s=1.0), power_reading="instant")
    assert str(caught.value) == "GPU 0 (llem simulated GPU (H100-like)) is lost: it fell off the bus (simulated fault)"
    assert "\n" not in str(caught.value)
    r, _, _ = simulated_run(SimulatedFault(kind="sampling_gap", at_s=1.0, duration_s=1.0), power_reading="instant")
    assert codes(r) == {"sampling_gap"} and r.energy_j is not None


def test_a_device_lost_before_the_window_fails_the_baseline_too():
    clock = Clock()
    sim = SimulatedNvml(spec(1, (SimulatedFault(kind="device_lost"),)), only=[UUID0], clock=clock)
    meter = EnergyMeter(sim.open, interval_s=INTERVAL_S, clock=clock).open()
    meter.sleep = clock.sleep
    sim.phase("measure")
    sim.busy(True)  # arms the fault at once (at_s 0)
    with pytest.raises(DeviceLost, match="is lost"):
        meter.loaded_idle(2.0, clock.sleep)
    with pytest.raises(DeviceLost):
        sim.total_energy_mj(0)
    assert sim.facts()[0].power_limit_w is None
