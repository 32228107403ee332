"""The 1 Hz telemetry sidecar: downsampling and the Parquet file with 003's 8 columns."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llem_agent.energy import EnergyMeter, WindowWork
from llem_agent.telemetry import TELEMETRY_COLUMNS, Sample, downsample, write_parquet
from tests.unit.test_energy import ReplayNvml


def sample(t: float, device: int, power: float, throttle: int = 0) -> Sample:
    return Sample(t, device, power, 60.0 + t, 1000.0, 80000.0, 50.0, 1500.0, throttle)


def test_downsample_to_one_row_per_device_per_second():
    samples = [sample(10 + i * 0.1, d, 100.0 + i, throttle=0x4 if i == 3 else 0) for i in range(20) for d in (0, 1)]
    rows = downsample(samples, start_s=10.0)
    assert [(r["timestamp_s"], r["gpu_index"]) for r in rows] == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    assert rows[0]["power_w"] == pytest.approx(104.5)  # mean of 100..109
    assert rows[0]["throttle_reasons"] == 0x4  # OR-ed, not averaged away
    assert rows[2]["throttle_reasons"] == 0


def test_parquet_has_the_eight_columns(tmp_path: Path):
    path = tmp_path / "timeseries.parquet"
    write_parquet(downsample([sample(0.0, 0, 200.0), sample(1.5, 0, 300.0)], 0.0), path)
    table = pq.read_table(path)
    assert tuple(table.column_names) == TELEMETRY_COLUMNS
    assert table.num_rows == 2
    assert table.column("power_w").to_pylist() == [200.0, 300.0]


def test_meter_writes_the_sidecar_only_when_it_has_samples(tmp_path: Path):
    meter = EnergyMeter(lambda: ReplayNvml(["H100"], 300.0), interval_s=0.01).open()
    meter.start()
    time.sleep(0.1)
    meter.stop(WindowWork(1, 1, 1, [(0.0, 0.01, 0.1)]))
    assert meter.write_telemetry(tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").column("gpu_index").to_pylist() == [0]
    assert not EnergyMeter(lambda: ReplayNvml(["H100"], 1.0)).write_telemetry(tmp_path / "none.parquet")
