"""Real NVML (marked gpu: skipped by tests/conftest.py only where NVML finds no device)."""

from __future__ import annotations

import time

import pytest

from llem_agent.energy import EnergyMeter, NvmlBackend, WindowWork

pytestmark = pytest.mark.gpu


def test_backend_reads_every_visible_device():
    backend = NvmlBackend().open()
    try:
        names = backend.device_names()
        assert names
        sample = backend.read(0)
        assert sample.power_w > 0
        assert 0 < sample.memory_used_mb <= sample.memory_total_mb
        facts = backend.facts()
        assert facts[0].uuid.startswith("GPU-")
        assert facts[0].driver_version
    finally:
        backend.close()


def test_idle_window_energy_from_the_counter_matches_the_trace():
    meter = EnergyMeter(lambda: NvmlBackend().open(), interval_s=0.1).open()
    try:
        meter.start()
        time.sleep(6.0)  # over the 5 s short-window threshold
        report = meter.stop(WindowWork(1, 1, 1, [(0.0, 0.1, 6.0)]))
    finally:
        meter.close()
    assert report.energy_j is not None
    assert report.energy_j > 0
    assert report.n_samples >= 40
    assert "short_window" not in {f.code for f in report.flags}
    if report.source == "nvml_total_energy":  # Volta and newer
        assert report.trace_energy_j == pytest.approx(report.energy_j, rel=0.25)
