"""Optional energy samplers (003 ``energy_sampler``): Zeus and CodeCarbon, installed as extras.

Each brackets the measured window next to llem's own NVML meter and its figure becomes the
run's ``energy_j`` (``source`` says which), with llem's counter and trace kept beside it:

- ``zeus``: Zeus's ``ZeusMonitor`` window (GPU energy from the NVML counter on Volta and newer,
  CPU energy through RAPL where Zeus can read it). It runs no poller of its own on those GPUs,
  so llem's sampler keeps its trace and flags.
- ``codecarbon``: CodeCarbon's tracker (GPU + CPU + RAM; estimated where it has no counter). It
  polls the GPUs in a thread of its own, so llem's sampler thread stays off for the window (one
  poller per device): the trace then has just the window's first and last reading.

``auto`` picks the best one available (003: Zeus > NVML > CodeCarbon): Zeus where it is
installed and the run has GPUs, else NVML where it has them, else CodeCarbon where it is
installed, else nothing (:func:`resolve_auto`). Import errors say which extra to install.
``ExternalSource`` is the sampler as one of the meter's energy sources; :func:`with_external`
writes its figure into the report.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from llem_agent.contract import EnergyReport, ExternalEnergyReport
from llem_agent.energy.errors import SamplerUnavailable, import_vendor
from llem_agent.energy.source import Window, WindowWork

J_PER_KWH = 3.6e6


@dataclass
class ExternalEnergy:
    energy_j: float | None
    parts_j: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    note: str | None = None


class ExternalSampler(Protocol):
    name: str
    polls_gpu: bool  # True: it samples the GPUs in its own thread, so llem's must not
    single_window: bool  # True: it measures one window per run (CodeCarbon's tracker), not a cold start too

    def start(self) -> None: ...

    def stop(self) -> ExternalEnergy: ...


@contextlib.contextmanager
def _cuda_devices_as_indices(nvml_indices: list[int]) -> Iterator[None]:
    """``CUDA_VISIBLE_DEVICES`` as the NVML indices of the run's GPUs while Zeus enumerates them.

    Zeus 0.16 reads the variable as integers (``int(idx)`` for each entry) when it builds its
    GPU list, but llem hands a run its GPUs by UUID (the local runner, Slurm, Kubernetes): a
    UUID there fails Zeus at start. NVML indices name the same devices; the variable is put
    back at once, so the engine still sees the UUIDs."""
    key = "CUDA_VISIBLE_DEVICES"
    before = os.environ.get(key)
    if nvml_indices:
        os.environ[key] = ",".join(str(i) for i in nvml_indices)
    else:
        os.environ.pop(key, None)  # Zeus refuses an empty value: none set means "what NVML sees"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


class ZeusSampler:
    name = "zeus"
    polls_gpu = False
    single_window = False  # windows by name, opened and closed as often as asked

    def __init__(self, nvml_indices: list[int]) -> None:
        """``nvml_indices``: the run's GPUs as NVML numbers them in this process."""
        missing = SamplerUnavailable("energy_sampler: zeus needs the zeus extra (pip install 'llem-agent[zeus]')")
        zeus = import_vendor("zeus", missing)
        monitor = import_vendor("zeus.monitor", missing)
        self._version = getattr(zeus, "__version__", None)
        with _cuda_devices_as_indices(nvml_indices):
            self._monitor: Any = monitor.ZeusMonitor(gpu_indices=list(range(len(nvml_indices))))

    def start(self) -> None:
        # sync_execution=False: Zeus's default synchronises CUDA, which creates a context on every
        # GPU in this process inside the window (vLLM and TensorRT-LLM keep their models in worker
        # processes); llem's engines synchronise themselves before the window opens and closes.
        self._monitor.begin_window("llem-window", sync_execution=False)

    def stop(self) -> ExternalEnergy:
        measurement = self._monitor.end_window("llem-window", sync_execution=False)
        gpu = float(sum(measurement.gpu_energy.values())) if measurement.gpu_energy else 0.0
        parts = {"gpu_j": gpu}
        for attr, key in (("cpu_energy", "cpu_j"), ("dram_energy", "dram_j")):
            values = getattr(measurement, attr, None)
            if values:
                parts[key] = float(sum(values.values()))
        return ExternalEnergy(energy_j=gpu, parts_j=parts, version=self._version, note="GPU energy (Zeus)")


class CodeCarbonSampler:
    name = "codecarbon"
    polls_gpu = True
    single_window = True  # one tracker, started once: restarting it is nothing CodeCarbon documents

    def __init__(self, interval_s: float = 1.0) -> None:
        codecarbon = import_vendor(
            "codecarbon",
            SamplerUnavailable(
                "energy_sampler: codecarbon needs the codecarbon extra (pip install 'llem-agent[codecarbon]')"
            ),
        )
        self._version = getattr(codecarbon, "__version__", None)
        # Energy is all llem takes from it: the country only sets CodeCarbon's own CO2 figure.
        self._tracker: Any = codecarbon.OfflineEmissionsTracker(
            country_iso_code="USA", measure_power_secs=interval_s, save_to_file=False, log_level="error"
        )

    def start(self) -> None:
        self._tracker.start()

    def stop(self) -> ExternalEnergy:
        self._tracker.stop()
        data = self._tracker.final_emissions_data
        parts = {
            f"{key}_j": float(getattr(data, f"{key}_energy", 0.0) or 0.0) * J_PER_KWH for key in ("gpu", "cpu", "ram")
        }
        total = float(data.energy_consumed) * J_PER_KWH
        return ExternalEnergy(energy_j=total, parts_j=parts, version=self._version, note="GPU + CPU + RAM (CodeCarbon)")


def installed(name: str) -> bool:
    """Whether the vendor package ``name`` can be imported here (an extra of the image)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules without a spec
        return name in sys.modules


def resolve_auto(nvml_indices: list[int], has: Callable[[str], bool] = installed) -> str | None:
    """What ``energy_sampler: auto`` measures with, best first (003: Zeus > NVML > CodeCarbon):
    ``zeus`` where it is installed and the run has GPUs NVML can read, else ``nvml`` where it
    has them, else ``codecarbon`` where it is installed (a CPU run, or NVML unusable), else None
    (nothing measures: ``energy_j`` is null with NVML's reason). ``has``: is a package installed."""
    if nvml_indices and has("zeus"):
        return "zeus"
    if nvml_indices:
        return "nvml"
    if has("codecarbon"):
        return "codecarbon"
    return None


def make_sampler(
    choice: str | None, nvml_indices: list[int], has: Callable[[str], bool] = installed
) -> ExternalSampler | None:
    """The external sampler for ``energy_sampler``; None means llem's NVML meter alone.
    ``nvml_indices``: the run's GPUs as NVML numbers them here ([] on a CPU run, or where NVML
    cannot be used); ``auto`` is resolved by :func:`resolve_auto`. Which one measured is the
    report's ``source`` (``zeus``, ``codecarbon``, ``nvml_*``, or None with the reason)."""
    if choice == "auto":
        choice = resolve_auto(nvml_indices, has)
    if choice == "zeus":
        return ZeusSampler(nvml_indices)
    if choice == "codecarbon":
        return CodeCarbonSampler()
    return None


class ExternalSource:
    """An external sampler as one of the meter's energy sources: its figure becomes the run's
    energy (:func:`with_external`), llem's own counter and trace kept beside it."""

    def __init__(self, sampler: ExternalSampler) -> None:
        self.sampler = sampler
        self.polls_gpu = sampler.polls_gpu
        self.single_window = getattr(sampler, "single_window", False)
        self._measured: ExternalEnergy | None = None

    def start(self, window: Window) -> None:
        self.sampler.start()

    def stop(self, window: Window) -> None:
        self._measured = self.sampler.stop()

    def measured(self, report: EnergyReport, work: WindowWork, window: Window) -> EnergyReport:
        if self._measured is None:
            return report
        return with_external(report, self.sampler, self._measured, work, window.duration_s)

    def close(self) -> None: ...


# Flags about llem's own trace that mean nothing while another tool does the polling.
_TRACE_FLAGS = frozenset({"sampling_gap", "counter_trace_disagree"})


def with_external(
    report: EnergyReport, sampler: ExternalSampler, measured: ExternalEnergy, work: WindowWork, duration_s: float
) -> EnergyReport:
    """The run's energy from the optional sampler, llem's own counter and trace kept beside it."""
    energy = measured.energy_j
    external = ExternalEnergyReport(
        sampler=sampler.name,  # type: ignore[arg-type]
        version=measured.version,
        energy_j=energy,
        parts_j=measured.parts_j,
        note=measured.note,
    )
    if energy is None:
        return report.model_copy(update={"external": external})
    tokens = work.output_tokens + work.input_tokens
    update: dict[str, object] = {
        "energy_j": energy,
        "source": sampler.name,
        "unavailable_reason": None,
        "external": external,
        "j_per_output_token": energy / work.output_tokens if work.output_tokens else None,
        "j_per_token": energy / tokens if tokens else None,
        "j_per_request": energy / work.n_requests if work.n_requests else None,
        "mean_power_w": energy / duration_s if duration_s > 0 else None,
    }
    baseline = report.baseline
    if sampler.polls_gpu:
        # llem's sampler was off (CodeCarbon polled): no trace to split or cross-check, and the
        # GPU idle baseline does not describe a GPU + CPU + RAM total.
        update |= {
            "flags": [f for f in report.flags if f.code not in _TRACE_FLAGS],
            "trace_energy_j": None,
            "prefill_energy_j": None,
            "decode_energy_j": None,
            "prefill_decode_note": "not measured: CodeCarbon polled the GPUs, so llem kept no power trace",
            "adjusted_energy_j": None,
            "baseline_note": "not subtracted: the baseline is GPU idle power, CodeCarbon's total covers GPU, CPU "
            "and RAM"
            if baseline
            else report.baseline_note,
        }
    elif baseline is not None:
        update["adjusted_energy_j"] = energy - baseline.subtracted_power_w * duration_s
    return report.model_copy(update=update)
