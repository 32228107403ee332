"""The energy sources as peers: the meter starts them in order, stops them in reverse and hands
the report through each (llem_agent.energy.source), values worked out by hand on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from llem_agent.contract import EnergyReport, ExperimentConfig, RunRequest, config_hash
from llem_agent.energy import (
    EnergyMeter,
    NvmlSource,
    RaplMeter,
    RaplSource,
    Window,
    WindowWork,
    disabled_meter,
)
from llem_agent.energy.external import ExternalEnergy
from llem_agent.energy.source import written
from llem_agent.measure import run_measurement
from tests.unit.test_measure import DummyEngine, no_nvml
from tests.unit.test_pinned_energy import Bench

WORK = WindowWork(output_tokens=100, input_tokens=0, n_requests=4, batch_spans=[])


class FakeCpu:
    """A CPU source that notes what the window looked like when it was started and stopped."""

    polls_gpu = False

    def __init__(self, joules: float | None, log: list[str], polls_gpu: bool = False) -> None:
        self.joules, self.log, self.polls_gpu = joules, log, polls_gpu
        self.seen: dict[str, tuple[float, float]] = {}
        self.closed = False

    def start(self, window: Window) -> None:
        self.log.append("cpu start")
        self.seen["start"] = (window.start, window.end)

    def stop(self, window: Window) -> None:
        self.log.append("cpu stop")
        self.seen["stop"] = (window.start, window.end)

    def measured(self, report: EnergyReport, work: WindowWork, window: Window) -> EnergyReport:
        self.log.append("cpu measured")
        return report.model_copy(update={"cpu_energy_j": self.joules, "cpu_energy_note": None})

    def close(self) -> None:
        self.closed = True


class FakeCodeCarbon:
    """An external sampler that polls the GPUs itself (so llem's thread stays off)."""

    name = "codecarbon"
    polls_gpu = True

    def __init__(self, log: list[str], joules: float) -> None:
        self.log, self.joules = log, joules

    def start(self) -> None:
        self.log.append("external start")

    def stop(self) -> ExternalEnergy:
        self.log.append("external stop")
        return ExternalEnergy(energy_j=self.joules, note="GPU + CPU + RAM (CodeCarbon)")


def test_sources_start_in_order_stop_in_reverse_and_each_writes_what_it_measured():
    bench = Bench(lambda t: 300.0)  # one GPU at 300 W; its counter moves by 300 mJ per 1 ms poll
    log: list[str] = []
    cpu = FakeCpu(42.0, log)
    meter = EnergyMeter(
        lambda: bench,  # type: ignore[arg-type, return-value]
        interval_s=1.0,
        clock=bench.clock,
        external_factory=lambda n: FakeCodeCarbon(log, 900.0),
        cpu_factory=lambda: [cpu],
    ).open()
    meter.sleep = bench.sleep
    assert [type(s).__name__ for s in meter.sources] == ["FakeCpu", "NvmlSource", "ExternalSource"]
    meter.start()
    # The CPU source started before the GPUs stamped the window; the GPUs opened it on their
    # counter's second step (1000.000 + 2 x 1 ms), before the external tool started.
    assert cpu.seen["start"] == (0.0, 0.0)
    assert meter.window.start == pytest.approx(1000.002)
    bench.sleep(10.0)
    r = meter.stop(WORK)
    # The GPUs closed the window on the next step (1010.002 + 1 ms), after the external tool
    # stopped and before the CPU source did.
    assert meter.window.end == pytest.approx(1010.003)
    assert cpu.seen["stop"] == pytest.approx((1000.002, 1010.003))
    assert log == ["cpu start", "external start", "external stop", "cpu stop", "cpu measured"]
    # Each wrote its own part: the CPU's 42 J survived the GPUs' report, whose counter says
    # 300 W x 10.001 s = 3000.3 J; CodeCarbon's 900 J became the run's energy, over the same
    # 10.001 s: 89.991 W and 9 J per output token.
    assert r.cpu_energy_j == 42.0 and r.cpu_energy_note is None
    assert r.devices[0].energy_j == pytest.approx(3000.3, abs=1e-6)
    assert (r.energy_j, r.source) == (900.0, "codecarbon")
    assert r.external is not None and r.external.energy_j == 900.0
    assert r.mean_power_w == pytest.approx(900.0 / 10.001)
    assert r.j_per_output_token == pytest.approx(9.0)
    meter.close()
    assert cpu.closed


def test_one_poller_per_device_whichever_source_polls():
    def own_poller(**kwargs: object) -> bool:
        return EnergyMeter(no_nvml, **kwargs).open().gpu.own_poller  # type: ignore[arg-type]

    log: list[str] = []
    assert own_poller() is True
    assert own_poller(cpu_factory=lambda: [FakeCpu(1.0, log)]) is True
    assert own_poller(external_factory=lambda n: FakeCodeCarbon(log, 1.0)) is False
    assert own_poller(cpu_factory=lambda: [FakeCpu(1.0, log, polls_gpu=True)]) is False


def test_a_gpu_report_writes_only_the_fields_it_set():
    cpu = EnergyReport(energy_j=None, source=None, cpu_energy_j=7.5)
    gpu = EnergyReport(energy_j=None, source=None, unavailable_reason="NVML unavailable: no driver")
    merged = cpu.model_copy(update=written(gpu))
    assert merged.cpu_energy_j == 7.5
    assert merged.unavailable_reason == "NVML unavailable: no driver"
    assert set(written(gpu)) == {"energy_j", "source", "unavailable_reason"}


def rapl_tree(root: Path, energy_uj: int) -> Path:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text(str(energy_uj))
    (zone / "max_energy_range_uj").write_text("262143328850")
    return zone / "energy_uj"


def test_rapl_is_a_source_beside_the_gpus_even_without_nvml(tmp_path: Path):
    counter = rapl_tree(tmp_path, 1_000_000)
    meter = EnergyMeter(no_nvml, cpu_factory=lambda: [RaplSource(RaplMeter(tmp_path))]).open()
    meter.start()
    counter.write_text("3500000")  # 2.5 J over the window
    r = meter.stop(WORK)
    assert r.cpu_energy_j == pytest.approx(2.5) and r.cpu_energy_note is None
    assert r.energy_j is None and r.unavailable_reason == "no GPU here"


def test_without_rapl_the_note_says_why(tmp_path: Path):
    meter = EnergyMeter(no_nvml, cpu_factory=lambda: [RaplSource(RaplMeter(tmp_path / "none"))]).open()
    meter.start()
    r = meter.stop(WORK)
    assert r.cpu_energy_j is None and r.cpu_energy_note == f"no RAPL counters under {tmp_path / 'none'}"


def test_the_production_builds_measure_the_cpu_packages_too():
    meter = disabled_meter().open()
    assert [type(s) for s in meter.sources] == [RaplSource, NvmlSource]
    meter.start()
    r = meter.stop(WORK)
    assert r.energy_j is None and r.unavailable_reason == "energy measurement disabled (energy_sampler: null)"


def test_the_measurement_loop_takes_the_cpu_figure_from_the_meters_sources():
    cfg = ExperimentConfig.model_validate(
        {"model": "m", "dataset": {"source": "builtin", "n_prompts": 4}, "pytorch": {"batch_size": 2}}
    )
    req = RunRequest(run_id="r", study_name="s", cycle=1, config_hash=config_hash(cfg), config=cfg)
    engine = DummyEngine()
    meter = EnergyMeter(no_nvml, cpu_factory=lambda: [FakeCpu(12.5, [])]).open()
    result = run_measurement(req, lambda name: engine, meter, lambda phase: None, sleep=lambda s: None)
    assert result.energy.cpu_energy_j == 12.5 and result.energy.cpu_energy_note is None
    assert result.energy.energy_j is None and result.energy.unavailable_reason == "no GPU here"
