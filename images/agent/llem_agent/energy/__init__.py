"""Energy over the measured window: the run's GPUs through NVML, its CPU packages through RAPL,
and optionally an external tool (Zeus, CodeCarbon).

- ``errors``: llem's energy exceptions, and the one place the vendors' errors become them.
- ``source``: what every energy source implements (``EnergySource``), the window and its work.
- ``meter``: ``EnergyMeter``, which drives the run's sources as peers, and its production builds.
- ``gpu``: the run's GPUs as a source (``NvmlSource``): counters on their steps, the trace, the
  idle baseline and the loaded idle power.
- ``nvml``: the only module that talks to NVML (devices, counters, power readings).
- ``sampler``: one thread that samples every device at a fixed interval.
- ``report``: the GPUs' energy report from counters and trace (pure functions).
- ``rapl``: the CPU packages as a source, through Linux RAPL.
- ``external``: the optional samplers, Zeus and CodeCarbon, as a source.
"""

from llem_agent.energy.errors import (
    BaselineFailed,
    DeviceLost,
    EnergyUnavailable,
    NvmlUnavailable,
    RaplUnavailable,
    SamplerUnavailable,
)
from llem_agent.energy.external import ExternalSource, with_external
from llem_agent.energy.gpu import NvmlSource
from llem_agent.energy.meter import EnergyMeter, disabled_meter, nvml_meter
from llem_agent.energy.nvml import (
    DEFAULT_INTERVAL_S,
    MAX_STEP_WAIT_S,
    STEP_POLL_S,
    EnergyBackend,
    NvmlBackend,
    PowerReading,
    visible_gpu_uuids,
)
from llem_agent.energy.rapl import RaplMeter, RaplSource
from llem_agent.energy.report import energy_report, phase_split
from llem_agent.energy.sampler import Sampler
from llem_agent.energy.source import EnergySource, Window, WindowWork

__all__ = [
    "DEFAULT_INTERVAL_S",
    "MAX_STEP_WAIT_S",
    "STEP_POLL_S",
    "BaselineFailed",
    "DeviceLost",
    "EnergyBackend",
    "EnergyMeter",
    "EnergySource",
    "EnergyUnavailable",
    "ExternalSource",
    "NvmlBackend",
    "NvmlSource",
    "NvmlUnavailable",
    "PowerReading",
    "RaplMeter",
    "RaplSource",
    "RaplUnavailable",
    "Sampler",
    "SamplerUnavailable",
    "Window",
    "WindowWork",
    "disabled_meter",
    "energy_report",
    "nvml_meter",
    "phase_split",
    "visible_gpu_uuids",
    "with_external",
]
