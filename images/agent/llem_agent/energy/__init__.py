"""Energy over the measured window: the run's GPUs through NVML, its CPU packages through RAPL,
and optionally an external tool (Zeus, CodeCarbon).

- ``errors``: llem's energy exceptions, and the one place the vendors' errors become them.
- ``nvml``: the only module that talks to NVML (devices, counters, power readings).
- ``sampler``: one thread that samples every device at a fixed interval.
- ``report``: the window's energy report from counters and trace (pure functions).
- ``meter``: the meter that brackets the window (``EnergyMeter``) and its production builds.
- ``rapl``: CPU package energy through Linux RAPL.
- ``external``: the optional samplers, Zeus and CodeCarbon.
"""

from llem_agent.energy.errors import (
    BaselineFailed,
    EnergyUnavailable,
    NvmlUnavailable,
    RaplUnavailable,
    SamplerUnavailable,
)
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
from llem_agent.energy.report import WindowWork, energy_report, phase_split, with_external
from llem_agent.energy.sampler import Sampler

__all__ = [
    "DEFAULT_INTERVAL_S",
    "MAX_STEP_WAIT_S",
    "STEP_POLL_S",
    "BaselineFailed",
    "EnergyBackend",
    "EnergyMeter",
    "EnergyUnavailable",
    "NvmlBackend",
    "NvmlUnavailable",
    "PowerReading",
    "RaplUnavailable",
    "Sampler",
    "SamplerUnavailable",
    "WindowWork",
    "disabled_meter",
    "energy_report",
    "nvml_meter",
    "phase_split",
    "visible_gpu_uuids",
    "with_external",
]
