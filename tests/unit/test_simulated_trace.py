"""A recorded NVML trace driving the simulated GPU: the fixture ``make gpu-check`` keeps
(tests/fixtures/nvml/) plays back unchanged: each reading as recorded at its recorded time (moved
to the window's first batch), and the counter the integral of those readings, which for the
fixture is its own recorded counter delta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llem.container import build_spec
from llem.errors import ConfigError
from llem.simulation import SIMULATE_ENV, parse_spec, simulated_trace
from llem_agent.contract import CONTAINER_SIMULATION_FILE
from llem_agent.contract.simulation import SIMULATION_TRACE_FILE, recorded_trace
from llem_agent.energy.simpower import Playback, PowerCurve
from llem_agent.energy.simulated import COUNTER_OFFSET_MJ, SimulatedNvml
from llem_agent.simulation import load_simulation
from tests.conftest import REPO
from tests.unit.test_simulated_nvml import UUID0, Clock, spec
from tests.unit.test_simulation_agent import CONFIG, request

FIXTURE = REPO / "tests" / "fixtures" / "nvml" / "synthetic-reference.json"


def raw() -> dict:
    return json.loads(FIXTURE.read_text())


def played(step_s: float = 0.02) -> tuple[SimulatedNvml, Clock, float]:
    """The fixture's trace on a simulated GPU idling at 70 W; returns the time its window opens."""
    clock = Clock()
    sim = SimulatedNvml(spec(1, counter_step_s=step_s, power_reading="instant"), only=[UUID0], clock=clock,
                        trace=recorded_trace(raw()))  # fmt: skip
    sim.open()
    sim.phase("baseline")
    clock.sleep(40.0)
    sim.phase("measure")
    sim.busy(True)  # the window's first batch: playback starts here (t = 1040.0)
    return sim, clock, clock()


def test_the_recorded_readings_play_back_unchanged_at_their_times():
    sim, clock, start = played()
    w0, w1 = raw()["window"]
    inside = [s for s in raw()["samples"] if w0 <= s["time_s"] <= w1]
    assert len(inside) == 119  # 100.1 ... 111.9 s, every 100 ms
    for sample in inside:
        clock.t = start + (sample["time_s"] - w0)
        assert sim.read_power(0) == pytest.approx(sample["power_w"], abs=1e-9)
    clock.t = start + 0.05  # halfway between the readings of 100.1 s (120 W) and 100.2 s (120 W)
    assert sim.read_power(0) == pytest.approx(120.0)
    clock.t = start - 1.0  # before the window: the simulator's own idle power
    assert sim.curve.power_w(clock.t) == pytest.approx(70.0)


def test_the_counter_over_the_window_is_the_recorded_counter():
    # The fixture's counter moved 1,005,836,772 - 1,000,000,000 = 5,836,772 mJ over its window
    # (100.05-111.95 s), the trapezoid integral of its readings; the window maps onto 1040.00-1051.90 s,
    # both on the 20 ms counter's steps.
    sim, clock, start = played()
    before = sim.total_energy_mj(0)
    clock.t = start + 11.9
    assert sim.total_energy_mj(0) - before == pytest.approx(5_836_772, abs=2)
    assert before == COUNTER_OFFSET_MJ + 40.0 * 70_000  # 40 s idle at 70 W before it
    clock.t = start + 13.9  # after the last reading (112.0 s: 490.277 W) its power is held
    assert sim.read_power(0) == pytest.approx(490.277)


def test_playback_integrates_exactly_between_readings():
    # Readings 100 W at 0 s, 300 W at 1 s, 300 W at 2 s played from 10 s on a 50 W curve:
    # 0.5 s in, 200 W and 0.5 x (100 + 200) / 2 = 75 J; at 2 s, 200 + 300 = 500 J.
    readings = [{"time_s": t, "power_w": p} for t, p in ((0.0, 100.0), (1.0, 300.0), (2.0, 300.0))]
    trace = recorded_trace({"window": [0.0, 2.0], "samples": readings})
    curve = Playback(PowerCurve(0.0, 50.0, tau_s=0.25), 10.0, trace)
    assert curve.power_w(10.5) == pytest.approx(200.0)
    assert curve.between_j(10.0, 10.5) == pytest.approx(75.0)
    assert curve.between_j(10.0, 12.0) == pytest.approx(500.0)
    assert curve.energy_j(10.0) == pytest.approx(500.0)  # 50 W for the 10 s before
    assert curve.peak_w(9.0, 12.0) == pytest.approx(300.0)
    assert curve.mean_w(10.0, 12.0) == pytest.approx(250.0)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([], "not a recorded NVML trace"),
        ({"samples": []}, "window must be"),
        ({"window": [0, 1], "samples": [{"time_s": 0.0, "power_w": 1.0}]}, "two or more samples"),
        ({"window": [0, 5], "samples": [{"time_s": 0.0, "power_w": 1.0}, {"time_s": 1.0, "power_w": 1.0}]},
         "do not cover its window"),
        ({"window": [0, 1], "samples": [{"time_s": 0.0, "power_w": -1.0}]}, "power_w >= 0"),
    ],
)  # fmt: skip
def test_a_trace_that_is_not_one_is_refused_in_one_line(data: object, says: str):
    with pytest.raises(ValueError, match=says) as caught:
        recorded_trace(data)
    assert "\n" not in str(caught.value)


# --- trace=PATH: from the spec, beside the description, to the agent's simulator -------------


def test_the_spec_names_a_trace_and_a_bad_one_is_refused_in_one_line(tmp_path: Path):
    spec = f"1,reading=instant,trace={FIXTURE}"
    assert parse_spec(spec).profile.power_reading == "instant"  # the trace is no profile field
    assert simulated_trace({SIMULATE_ENV: spec}) == FIXTURE.read_text()
    assert simulated_trace({SIMULATE_ENV: "1"}) is None
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "empty.json").write_text('{"window": [0, 1], "samples": []}')
    for path, says in (
        (tmp_path / "missing.json", "No such file or directory"),
        (tmp_path / "broken.json", "Expecting property name"),
        (tmp_path / "empty.json", "two or more samples"),
    ):
        with pytest.raises(ConfigError, match=says) as caught:
            parse_spec(f"1,trace={path}")
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_the_trace_is_mounted_beside_the_description_and_the_agent_plays_it(tmp_path: Path):
    study = tmp_path / "study"
    study.mkdir()
    description = study / "simulated-gpus.json"
    description.write_text(parse_spec("1,reading=instant").model_dump_json())
    beside = study / SIMULATION_TRACE_FILE
    beside.write_text(FIXTURE.read_text())
    spec = build_spec(image="llem/pytorch:test", study_id="s", run_id="e001-c1", run_dir=tmp_path / "run",
                      hf_home=tmp_path / "hf", model_dir=None, gpu_indices=(0,), host_uid=1000, host_gid=1000,
                      host_pid=1, gpu_uuids=(UUID0,), simulation_file=description, simulation_trace=beside)  # fmt: skip
    mount = spec.mount_at("/llem/simulated-trace.json")  # beside CONTAINER_SIMULATION_FILE
    assert CONTAINER_SIMULATION_FILE == "/llem/simulated-gpus.json"
    assert mount is not None and mount.read_only and mount.source == beside
    sim = load_simulation(request(CONFIG, gpus=["0"], gpu_uuids=[UUID0], simulated_gpus=str(description)), {})
    assert sim is not None and sim.trace is not None and sim.trace.window_s == (100.05, 111.95)
    beside.unlink()  # no trace beside it: the simulator's own power model
    plain = load_simulation(request(CONFIG, gpus=["0"], gpu_uuids=[UUID0], simulated_gpus=str(description)), {})
    assert plain is not None and plain.trace is None
