"""What every energy source implements, so that the meter drives them all in one loop.

A source is one thing that measures the window's energy: the run's GPUs through NVML
(``gpu.NvmlSource``), its CPU packages through RAPL (``rapl.RaplSource``), an external tool,
Zeus or CodeCarbon (``external.ExternalSource``). The meter starts every source in order and
stops them in reverse, so the first one's window encloses the others', then hands the energy
report through each source in order, and each writes what it measured into it: the GPUs their
devices, energy and trace figures, the CPU packages ``cpu_energy_j``, an external tool its own
figure, which then becomes the run's energy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from llem_agent.contract import EnergyReport


@dataclass
class Window:
    """The measured window's bounds on the meter's clock. A source that aligns the window on
    ticks of its own (NVML's energy counters) moves them as it starts and stops."""

    start: float = 0.0
    end: float = 0.0

    @property
    def duration_s(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class WindowWork:
    """What happened in the window, for the per-unit energies and the attribution."""

    output_tokens: int
    input_tokens: int
    n_requests: int
    # (start, first token, end) of each batch, seconds since the window opened.
    batch_spans: list[tuple[float, float, float]]
    # Every batch prefilled all its requests before its first token (static batching); False
    # where prefill and decode interleave (continuous batching: vLLM, TensorRT-LLM).
    static_batches: bool = True


class EnergySource(Protocol):
    """One source of the window's energy, driven by the meter with the others as its peers."""

    # It samples the GPUs in a thread of its own (CodeCarbon, llem's NVML sampler). One poller
    # per device: where another source does, the GPUs' source keeps its own thread off.
    polls_gpu: bool

    def start(self, window: Window) -> None:
        """Open this source's window (sources start in order)."""

    def stop(self, window: Window) -> None:
        """Close it (in reverse order), keeping what was measured."""

    def measured(self, report: EnergyReport, work: WindowWork, window: Window) -> EnergyReport:
        """``report`` with what this source measured written into it (in the sources' order)."""

    def close(self) -> None:
        """Release what the source holds (the meter closes every source once the run ends)."""


def written(part: EnergyReport) -> dict[str, Any]:
    """The fields a source's own report set, to write over the report so far: what it did not
    set keeps what an earlier source wrote (the CPU packages' energy under the GPUs' report)."""
    return {name: getattr(part, name) for name in part.model_fields_set}
