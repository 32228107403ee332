"""The only module that talks to NVML: per-device total-energy counters.

Energy over a window is the delta of each device's cumulative energy counter (Volta and
newer: ``nvmlDeviceGetTotalEnergyConsumption``, millijoules). Devices are the ones NVML
sees in this container, which are exactly the devices the host gave the run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from llem_agent.contract import DeviceEnergy, EnergyReport


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here (no driver, no device, or no energy counter)."""


class EnergyBackend(Protocol):
    """What the meter needs from NVML; faked in unit tests."""

    def device_names(self) -> list[str]: ...

    def total_energy_mj(self, index: int) -> int: ...

    def close(self) -> None: ...


class NvmlBackend:
    """Real NVML, through nvidia-ml-py. Vendor errors become ``NvmlUnavailable`` here only."""

    def __init__(self) -> None:
        self._handles: list[object] = []
        self._names: list[str] = []

    def open(self) -> NvmlBackend:
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable("nvidia-ml-py is not installed") from exc
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._names = [str(pynvml.nvmlDeviceGetName(h)) for h in self._handles]
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML unavailable: {exc}") from exc
        if not self._handles:
            raise NvmlUnavailable("NVML sees no GPU in this container")
        return self

    def device_names(self) -> list[str]:
        return list(self._names)

    def total_energy_mj(self, index: int) -> int:
        import pynvml

        try:
            return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handles[index]))
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"GPU {index} ({self._names[index]}) has no total-energy counter: {exc}") from exc

    def close(self) -> None:
        import pynvml

        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


@dataclass
class _Window:
    start_mj: list[int]


class EnergyMeter:
    """Brackets a measured window with counter reads.

    When NVML or the counter is missing, the meter still works and reports
    ``energy_j=None`` with the reason, so a CPU run is never mistaken for a 0 J run.
    """

    def __init__(self, backend_factory: Callable[[], EnergyBackend]) -> None:
        self._factory = backend_factory
        self._backend: EnergyBackend | None = None
        self._reason: str | None = None
        self._window: _Window | None = None

    def open(self) -> EnergyMeter:
        try:
            self._backend = self._factory()
        except NvmlUnavailable as exc:
            self._reason = str(exc)
        return self

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    def _read(self) -> list[int] | None:
        if self._backend is None:
            return None
        try:
            return [self._backend.total_energy_mj(i) for i in range(len(self._backend.device_names()))]
        except NvmlUnavailable as exc:
            self._reason = str(exc)
            self._backend.close()
            self._backend = None
            return None

    def start(self) -> None:
        start = self._read()
        self._window = _Window(start) if start is not None else None

    def stop(self, output_tokens: int) -> EnergyReport:
        end = self._read()
        if self._window is None or end is None or self._backend is None:
            return EnergyReport(energy_j=None, source=None, unavailable_reason=self._reason)
        names = self._backend.device_names()
        devices: list[DeviceEnergy] = []
        for index, (a, b) in enumerate(zip(self._window.start_mj, end, strict=True)):
            if b < a:
                return EnergyReport(
                    energy_j=None,
                    source=None,
                    unavailable_reason=f"energy counter of GPU {index} went backwards ({a} -> {b} mJ)",
                )
            devices.append(DeviceEnergy(index=index, name=names[index], energy_j=(b - a) / 1000.0))
        total = sum(d.energy_j for d in devices)
        return EnergyReport(
            energy_j=total,
            source="nvml_total_energy",
            devices=devices,
            j_per_output_token=total / output_tokens if output_tokens else None,
        )


def nvml_meter() -> EnergyMeter:
    """The production meter: real NVML."""
    return EnergyMeter(lambda: NvmlBackend().open())


def disabled_meter() -> EnergyMeter:
    """``energy_sampler: null``: throughput-only runs that never touch NVML."""

    def refuse() -> EnergyBackend:
        raise NvmlUnavailable("energy measurement disabled (energy_sampler: null)")

    return EnergyMeter(refuse)
