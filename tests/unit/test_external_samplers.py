"""Zeus and CodeCarbon as optional samplers, through fakes of their packages (the seam is the
import): which figure becomes energy_j, and that one device never gets two pollers."""

from __future__ import annotations

import sys
import threading
import time
import types
from typing import Any

import pytest

from llem_agent.energy import EnergyMeter, WindowWork
from llem_agent.energy.external import (
    CodeCarbonSampler,
    SamplerUnavailable,
    ZeusSampler,
    installed,
    make_sampler,
    resolve_auto,
)
from tests.unit.test_energy import ReplayNvml

WORK = WindowWork(output_tokens=100, input_tokens=50, n_requests=4, batch_spans=[(0.0, 0.05, 0.3)])


@pytest.fixture
def fake_zeus(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    class Measurement:
        def __init__(self) -> None:
            self.time = 0.3
            self.gpu_energy = {0: 60.0, 1: 40.0}
            self.cpu_energy = {0: 5.0}

    class ZeusMonitor:
        def __init__(self, gpu_indices: list[int]) -> None:
            seen["gpu_indices"] = gpu_indices

        def begin_window(self, key: str, sync_execution: bool = True) -> None:
            seen["begin"] = key

        def end_window(self, key: str, sync_execution: bool = True) -> Measurement:
            seen["end"] = key
            return Measurement()

    zeus = types.ModuleType("zeus")
    zeus.__version__ = "0.16.0"  # type: ignore[attr-defined]
    monitor = types.ModuleType("zeus.monitor")
    monitor.ZeusMonitor = ZeusMonitor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "zeus", zeus)
    monkeypatch.setitem(sys.modules, "zeus.monitor", monitor)
    return seen


@pytest.fixture
def fake_codecarbon(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {"threads": set()}

    class Data:
        energy_consumed = 1e-4  # kWh = 360 J
        gpu_energy, cpu_energy, ram_energy = 8e-5, 1.5e-5, 5e-6

    class OfflineEmissionsTracker:
        def __init__(self, **kwargs: Any) -> None:
            seen["kwargs"] = kwargs
            self.final_emissions_data = Data()

        def start(self) -> None:
            seen["started"] = True

        def stop(self) -> float:
            return 0.0

    codecarbon = types.ModuleType("codecarbon")
    codecarbon.__version__ = "3.3.2"  # type: ignore[attr-defined]
    codecarbon.OfflineEmissionsTracker = OfflineEmissionsTracker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "codecarbon", codecarbon)
    return seen


def test_zeus_energy_becomes_energy_j_and_llem_keeps_its_trace(fake_zeus: dict[str, Any]):
    fake = ReplayNvml(["A100", "A100"], 250.0)
    meter = EnergyMeter(lambda: fake, interval_s=0.01, external_factory=lambda n: make_sampler("zeus", n)).open()
    assert fake_zeus["gpu_indices"] == [0, 1]  # the run's devices, as the container numbers them
    meter.start()
    time.sleep(0.2)
    r = meter.stop(WORK)
    meter.close()
    assert r.source == "zeus" and r.energy_j == 100.0
    assert r.external is not None and r.external.parts_j == {"gpu_j": 100.0, "cpu_j": 5.0}
    assert r.external.version == "0.16.0"
    assert r.j_per_output_token == 1.0 and r.j_per_token == pytest.approx(100 / 150)
    assert r.devices[0].energy_j is not None  # llem's own counter reading stays beside it
    assert r.trace_energy_j is not None and r.n_samples > 10


def test_codecarbon_polls_so_llem_does_not(fake_codecarbon: dict[str, Any]):
    fake = ReplayNvml(["L4"], 70.0)
    meter = EnergyMeter(lambda: fake, interval_s=0.01, external_factory=lambda n: make_sampler("codecarbon", n))
    meter.open()
    before = threading.active_count()
    meter.start()
    assert threading.active_count() == before  # no llem sampler thread while CodeCarbon polls
    time.sleep(0.1)
    r = meter.stop(WORK)
    assert fake.readers == {threading.get_ident()}  # only the bracketing reads, from this thread
    assert r.source == "codecarbon" and r.energy_j == pytest.approx(360.0)
    assert r.external is not None
    assert r.external.parts_j == pytest.approx({"gpu_j": 288.0, "cpu_j": 54.0, "ram_j": 18.0})
    assert r.trace_energy_j is None and r.prefill_energy_j is None
    assert not {f.code for f in r.flags} & {"sampling_gap", "counter_trace_disagree"}
    assert fake_codecarbon["kwargs"]["save_to_file"] is False


def test_codecarbon_works_without_a_gpu(fake_codecarbon: dict[str, Any]):
    from llem_agent.energy import NvmlUnavailable

    def no_gpu() -> ReplayNvml:
        raise NvmlUnavailable("NVML unavailable: no driver")

    meter = EnergyMeter(no_gpu, external_factory=lambda n: make_sampler("codecarbon", n)).open()
    meter.start()
    r = meter.stop(WORK)
    assert r.energy_j == pytest.approx(360.0) and r.unavailable_reason is None and r.source == "codecarbon"


@pytest.mark.parametrize(
    ("indices", "have", "expected"),
    [
        ([0], {"zeus", "codecarbon"}, "zeus"),  # Zeus first where it is installed and there are GPUs
        ([0, 1], {"zeus"}, "zeus"),
        ([0], {"codecarbon"}, "nvml"),  # NVML beats CodeCarbon where the run has GPUs
        ([0], set(), "nvml"),
        ([], {"zeus", "codecarbon"}, "codecarbon"),  # no GPU (or NVML unusable): Zeus cannot, CodeCarbon can
        ([], {"codecarbon"}, "codecarbon"),
        ([], {"zeus"}, None),  # nothing measures: energy_j null with NVML's reason
        ([], set(), None),
    ],
)
def test_auto_is_zeus_then_nvml_then_codecarbon(indices: list[int], have: set[str], expected: str | None):
    assert resolve_auto(indices, have.__contains__) == expected


def test_auto_builds_the_sampler_it_resolved(fake_zeus: dict[str, Any], fake_codecarbon: dict[str, Any]):
    both = {"zeus", "codecarbon"}.__contains__
    assert isinstance(make_sampler("auto", [0], both), ZeusSampler)
    assert make_sampler("auto", [0], {"codecarbon"}.__contains__) is None  # NVML: llem's own meter alone
    assert isinstance(make_sampler("auto", [], both), CodeCarbonSampler)
    assert make_sampler("auto", [], {"zeus"}.__contains__) is None
    assert make_sampler("nvml", [0], both) is None
    assert make_sampler(None, [0], both) is None


def test_auto_on_a_cpu_run_measures_with_codecarbon(fake_codecarbon: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    """The seam is the import: the fake CodeCarbon is in sys.modules, Zeus is not installed."""
    from llem_agent.energy import NvmlUnavailable

    monkeypatch.setitem(sys.modules, "zeus", None)

    def no_gpu() -> ReplayNvml:
        raise NvmlUnavailable("NVML sees no GPU here")

    assert installed("codecarbon") and not installed("zeus")
    meter = EnergyMeter(no_gpu, external_factory=lambda n: make_sampler("auto", n)).open()
    meter.start()
    r = meter.stop(WORK)
    assert r.source == "codecarbon" and r.energy_j == pytest.approx(360.0)  # 1e-4 kWh x 3.6e6 J/kWh


def test_auto_with_a_gpu_and_no_zeus_is_nvml(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "zeus", None)
    fake = ReplayNvml(["L4"], 70.0)
    meter = EnergyMeter(lambda: fake, interval_s=0.01, external_factory=lambda n: make_sampler("auto", n)).open()
    meter.start()
    time.sleep(0.05)
    r = meter.stop(WORK)
    meter.close()
    assert r.source is not None and r.source.startswith("nvml") and r.external is None


def test_a_missing_extra_says_which(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "zeus", None)
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    with pytest.raises(SamplerUnavailable, match=r"llem-agent\[zeus\]"):
        ZeusSampler([0])
    with pytest.raises(SamplerUnavailable, match=r"llem-agent\[codecarbon\]"):
        CodeCarbonSampler()
