"""RAPL CPU energy from a fake powercap tree, counter wrap included."""

from pathlib import Path

import pytest

from llem_agent.energy.rapl import RaplMeter


def zone(root: Path, name: str, energy_uj: int, max_uj: int = 262_143_328_850) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "energy_uj").write_text(str(energy_uj))
    (path / "max_energy_range_uj").write_text(str(max_uj))
    return path


def test_packages_are_summed_and_subzones_ignored(tmp_path: Path):
    zero = zone(tmp_path, "intel-rapl:0", 1_000_000)
    one = zone(tmp_path, "intel-rapl:1", 5_000_000)
    zone(tmp_path, "intel-rapl:0:0", 0)  # a subzone (core) of package 0: already inside it
    meter = RaplMeter(tmp_path)
    meter.start()
    (zero / "energy_uj").write_text("3000000")
    (one / "energy_uj").write_text("6500000")
    assert meter.stop() == pytest.approx(3.5)


def test_a_wrapped_counter_is_corrected(tmp_path: Path):
    package = zone(tmp_path, "intel-rapl:0", 999_000, max_uj=1_000_000)
    meter = RaplMeter(tmp_path)
    meter.start()
    (package / "energy_uj").write_text("4000")
    assert meter.stop() == pytest.approx(0.005)


def test_no_rapl_says_why(tmp_path: Path):
    meter = RaplMeter(tmp_path / "missing")
    meter.start()
    assert meter.stop() is None
    assert "no RAPL counters" in (meter.reason or "")
