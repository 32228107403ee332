"""Simulated GPUs in the agent: only a request that names a simulation turns it on; the agent's
phases and the engine's batches drive it; the result says so and the ground truth lies beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llem_agent.contract import ExperimentConfig, RunRequest, config_hash
from llem_agent.contract.simulation import SimulatedDevice, SimulatedFault, SimulatedGpus, simulated_uuid
from llem_agent.energy import DeviceLost, SamplerUnavailable, Window
from llem_agent.energy.simledger import ledger
from llem_agent.energy.simulated import SimulatedNvml
from llem_agent.measure import run_measurement
from llem_agent.metrics import BatchObservation
from llem_agent.simulation import SimulatedEngine, load_simulation, simulated_engines, simulated_meter, write_ledger
from tests.unit.test_measure import DummyEngine
from tests.unit.test_simulated_nvml import Clock

UUIDS = [simulated_uuid(0), simulated_uuid(1)]


def description(tmp_path: Path) -> Path:
    path = tmp_path / "simulated-gpus.json"
    devices = [SimulatedDevice(index=i, uuid=u) for i, u in enumerate(UUIDS)]
    path.write_text(SimulatedGpus(devices=devices).model_dump_json())
    return path


def request(config: ExperimentConfig, **fields: object) -> RunRequest:
    return RunRequest(run_id="r", study_name="s", cycle=1, config_hash=config_hash(config), config=config, **fields)  # type: ignore[arg-type]


CONFIG = ExperimentConfig.model_validate(
    {
        "model": "m",
        "dataset": {"source": "builtin", "n_prompts": 12},
        "warmup": {"n_warmup": 2, "thermal_floor_seconds": 30},
        "baseline": {"strategy": "fresh", "duration_seconds": 5},
        "pytorch": {"batch_size": 1},
    }
)


def test_only_a_request_that_names_a_simulation_turns_it_on(tmp_path: Path):
    assert load_simulation(request(CONFIG, gpus=["0"], gpu_uuids=["GPU-real"])) is None
    sim = load_simulation(
        request(CONFIG, gpus=["1"], gpu_uuids=[UUIDS[1]], simulated_gpus=str(description(tmp_path))),
        environ={"LLEM_SIMULATED_DEVICES": UUIDS[1]},
    )
    assert sim is not None
    assert sim.device_uuids() == [UUIDS[1]] and sim.visible_uuids() == [UUIDS[1]]
    local = load_simulation(request(CONFIG, simulated_gpus=str(description(tmp_path))), environ={})
    assert local is not None and local.visible_uuids() == UUIDS  # no container: NVML sees every GPU


def test_a_description_that_is_not_one_is_refused(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "llem.simulated_gpus", "devices": [{"index": 0, "uuid": "GPU-5c1e"}]}))
    with pytest.raises(ValueError, match="uuid"):
        load_simulation(request(CONFIG, simulated_gpus=str(bad)), environ={})


def test_external_samplers_cannot_measure_simulated_gpus(tmp_path: Path):
    sim = SimulatedNvml(SimulatedGpus.model_validate_json(description(tmp_path).read_text()))
    with pytest.raises(SamplerUnavailable, match="cannot measure simulated GPUs"):
        simulated_meter(sim, 0.1, "zeus")
    assert simulated_meter(sim, 0.1, "auto").gpu is not None


def test_the_engine_does_not_know_its_batches_drive_the_simulator():
    clock = Clock()
    sim = SimulatedNvml(SimulatedGpus(devices=[SimulatedDevice(index=0, uuid=UUIDS[0])]), clock=clock)
    sim.phase("measure")

    class Failing(DummyEngine):
        def generate(self, prompts: list[str]) -> BatchObservation:
            assert sim._busy  # running: the simulator is at load
            clock.sleep(1.0)
            raise RuntimeError("CUDA error")

    engine = SimulatedEngine(Failing(), sim)
    with pytest.raises(RuntimeError):
        engine.generate(["a"])
    assert not sim._busy and sim.batches == [[1000.0, 1001.0]]
    assert sim.armed_s == 1000.0  # the first measured batch: faults are timed from it


def test_a_batch_on_a_lost_simulated_gpu_fails_before_it_runs():
    clock = Clock()
    lost = SimulatedFault(kind="device_lost", at_s=2.0)
    sim = SimulatedNvml(SimulatedGpus(devices=[SimulatedDevice(index=0, uuid=UUIDS[0])], faults=[lost]), clock=clock)
    sim.phase("measure")
    ran = []

    class Counting(DummyEngine):
        def generate(self, prompts: list[str]) -> BatchObservation:
            ran.append(clock())
            clock.sleep(1.5)
            return super().generate(prompts)

    engine = SimulatedEngine(Counting(), sim)
    engine.generate(["a"])  # armed at 1000.0; lost from 1002.0
    engine.generate(["b"])  # starts at 1001.5: still there
    with pytest.raises(DeviceLost, match=r"^GPU 0 \(llem simulated GPU \(H100-like\)\) is lost"):
        engine.generate(["c"])  # would start at 1003.0
    assert ran == [1000.0, 1001.5]


def test_a_simulated_run_through_the_measurement_loop(tmp_path: Path):
    clock = Clock()
    spec = SimulatedGpus.model_validate_json(description(tmp_path).read_text())
    sim = SimulatedNvml(spec, only=[UUIDS[0]], visible=[UUIDS[0]], clock=clock)

    from llem_agent.energy import EnergyMeter

    meter = EnergyMeter(sim.open, interval_s=0.1, clock=clock).open()

    class Timed(DummyEngine):
        def generate(self, prompts: list[str]) -> BatchObservation:
            for _ in range(5):  # each batch: half a second of load on the simulated GPU, sampled
                clock.sleep(0.1)  # at 10 Hz in the window (standing in for the sampler thread)
                if meter.gpu._sampler is not None:
                    meter.gpu._sampler.sample_once()
            return super().generate(prompts)

    meter.gpu.own_poller = False
    meter.sleep = clock.sleep
    phases: list[str] = []

    def on_phase(name: str) -> None:
        sim.phase(name)
        phases.append(name)

    result = run_measurement(
        request(CONFIG, gpus=["0"], gpu_uuids=[UUIDS[0]], simulated_gpus="/llem/simulated-gpus.json"),
        simulated_engines(lambda name: Timed(), sim),
        meter,
        on_phase,
        sleep=clock.sleep,
        visible_gpus=sim.visible_uuids,
        simulated=True,
    )
    meter.close()
    assert phases == ["baseline", "load", "warmup", "measure", "report"]
    env = result.environment
    assert env.gpus_simulated is True and env.device == "cpu"  # the engine ran on the CPU
    assert [g.uuid for g in env.gpus] == [UUIDS[0]] and env.gpus[0].name.startswith("llem simulated GPU")
    assert result.warmup is not None and result.warmup.thermal_floor_s == 30.0  # a GPU's floor, on the CPU
    truth = ledger(sim, (meter.window.start, meter.window.end), result.output_tokens)["truth"]
    energy = result.energy
    assert energy.energy_j == pytest.approx(truth["counter_energy_j"], abs=0.002)
    assert energy.energy_j is not None and energy.energy_uncertainty_j is not None
    assert abs(energy.energy_j - truth["energy_j"]) <= energy.energy_uncertainty_j
    assert energy.baseline is not None and energy.baseline.power_w == pytest.approx([70.0])
    assert energy.baseline.loaded_power_w == pytest.approx([110.0])
    assert energy.j_per_output_token == pytest.approx(truth["j_per_output_token"], rel=1e-3)
    assert {f.code for f in energy.flags} == set()  # 12 batches of 0.5 s: a 6 s window, no fault
    path = tmp_path / "simulation.json"
    write_ledger(path, sim, meter.window, result.output_tokens)
    assert json.loads(path.read_text())["truth"]["energy_j"] == pytest.approx(truth["energy_j"])
    write_ledger(path, sim, Window(), None)  # a run that failed before its window: phases only
    assert json.loads(path.read_text())["truth"] is None
