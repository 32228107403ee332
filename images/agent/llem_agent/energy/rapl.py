"""CPU package energy through Linux RAPL (``/sys/class/powercap/intel-rapl:N``), when present:
one of the meter's energy sources, beside the GPUs.

Each package's ``energy_uj`` counter wraps at ``max_energy_range_uj``; one wrap per window
is corrected (windows are far shorter than a wrap, which takes minutes at full power).
"""

from __future__ import annotations

from pathlib import Path

from llem_agent.contract import EnergyReport
from llem_agent.energy.errors import RaplUnavailable, rapl_errors, rapl_missing
from llem_agent.energy.source import Window, WindowWork

POWERCAP = Path("/sys/class/powercap")


def _zones(root: Path) -> list[Path]:
    # Top-level package zones only ("intel-rapl:0"), not their subzones ("intel-rapl:0:0").
    return sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1 and (p / "energy_uj").exists())


class RaplMeter:
    """Brackets a window with reads of every CPU package's energy counter."""

    def __init__(self, root: Path = POWERCAP) -> None:
        self.zones = _zones(root) if root.exists() else []
        self._start: list[int] = []
        self.reason: str | None = None if self.zones else str(rapl_missing(root))

    def _read(self) -> list[int] | None:
        try:
            with rapl_errors():
                return [int((z / "energy_uj").read_text()) for z in self.zones]
        except RaplUnavailable as exc:
            self.reason = str(exc)
            return None

    def start(self) -> None:
        self._start = (self._read() or []) if self.zones else []

    def stop(self) -> float | None:
        """CPU energy of the window in joules, or None (``reason`` says why)."""
        end = self._read() if self.zones else None
        if end is None or len(end) != len(self._start):
            return None
        total_uj = 0
        for zone, a, b in zip(self.zones, self._start, end, strict=True):
            wrap = int((zone / "max_energy_range_uj").read_text()) if b < a else 0  # the counter wrapped
            total_uj += b + wrap - a
        return total_uj / 1e6


class RaplSource:
    """The CPU packages as an energy source: ``cpu_energy_j``, or ``cpu_energy_note`` saying why
    there is none."""

    polls_gpu = False

    def __init__(self, meter: RaplMeter | None = None) -> None:
        self.meter = meter if meter is not None else RaplMeter()
        self._energy_j: float | None = None

    def start(self, window: Window) -> None:
        self.meter.start()

    def stop(self, window: Window) -> None:
        self._energy_j = self.meter.stop()

    def measured(self, report: EnergyReport, work: WindowWork, window: Window) -> EnergyReport:
        energy = self._energy_j
        return report.model_copy(
            update={"cpu_energy_j": energy, "cpu_energy_note": None if energy is not None else self.meter.reason}
        )

    def close(self) -> None: ...
