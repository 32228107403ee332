"""The energy meter through an in-memory NVML fake that replays counter readings."""

from collections.abc import Iterator

import pytest

from llem_agent.energy import EnergyMeter, NvmlUnavailable


class ReplayNvml:
    def __init__(self, names: list[str], readings_mj: list[list[int]]) -> None:
        self.names = names
        self._readings: Iterator[list[int]] = iter(readings_mj)
        self._current: list[int] = []
        self.closed = False

    def device_names(self) -> list[str]:
        return self.names

    def total_energy_mj(self, index: int) -> int:
        if index == 0:
            self._current = next(self._readings)
        return self._current[index]

    def close(self) -> None:
        self.closed = True


def test_energy_is_the_counter_delta_summed_over_devices():
    fake = ReplayNvml(["H100", "H100"], [[1_000, 5_000], [3_500, 9_000]])
    meter = EnergyMeter(lambda: fake).open()
    meter.start()
    report = meter.stop(output_tokens=100)
    assert report.energy_j == pytest.approx(6.5)
    assert [d.energy_j for d in report.devices] == [2.5, 4.0]
    assert report.source == "nvml_total_energy"
    assert report.j_per_output_token == pytest.approx(0.065)
    meter.close()
    assert fake.closed


def test_no_nvml_gives_null_energy_with_reason():
    def unavailable():
        raise NvmlUnavailable("NVML unavailable: Driver Not Loaded")

    meter = EnergyMeter(unavailable).open()
    meter.start()
    report = meter.stop(output_tokens=10)
    assert report.energy_j is None
    assert report.unavailable_reason == "NVML unavailable: Driver Not Loaded"


def test_counter_going_backwards_is_not_reported_as_energy():
    meter = EnergyMeter(lambda: ReplayNvml(["A100"], [[9_000], [1_000]])).open()
    meter.start()
    report = meter.stop(output_tokens=1)
    assert report.energy_j is None
    assert "went backwards" in (report.unavailable_reason or "")


def test_missing_counter_mid_run_gives_null_energy():
    class NoCounter(ReplayNvml):
        def total_energy_mj(self, index: int) -> int:
            raise NvmlUnavailable("GPU 0 (T4) has no total-energy counter: Not Supported")

    meter = EnergyMeter(lambda: NoCounter(["T4"], [])).open()
    meter.start()
    report = meter.stop(output_tokens=1)
    assert report.energy_j is None
    assert "no total-energy counter" in (report.unavailable_reason or "")
