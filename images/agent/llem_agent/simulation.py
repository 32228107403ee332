"""Simulated GPUs in the agent: the run's NVML seam becomes a simulator driven by the agent itself.

Only a run request that names a simulation description (``RunRequest.simulated_gpus``, which the
host sets for ``--simulate-gpus`` alone) turns it on. Then the meter's backend is a
``SimulatedNvml`` of the described GPUs that this container was given (``LLEM_SIMULATED_DEVICES``,
the simulated counterpart of the NVIDIA runtime's device injection), the agent's phases drive
its power (``phase``), and the engine, wrapped here without knowing it, says when a batch runs
(``SimulatedEngine``). The engine itself runs wherever it runs (the CPU): the run's GPU path is
exercised, its numbers are the simulator's, and the result says so (``gpus_simulated``). The
simulator's ground truth is written beside the result (``simulation.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from llem_agent.contract import AgentEnvironment, ExperimentConfig, RunRequest, write_atomic
from llem_agent.contract.simulation import (
    SIMULATED_DEVICES_ENV,
    SIMULATION_TRACE_FILE,
    SimulatedGpus,
    recorded_trace,
)
from llem_agent.energy import EnergyMeter, SamplerUnavailable, Window
from llem_agent.energy.meter import cpu_packages
from llem_agent.energy.simledger import ledger
from llem_agent.energy.simulated import SimulatedNvml
from llem_agent.engines.base import Engine, RunDirs
from llem_agent.metrics import BatchObservation

# The description is a small JSON file; anything larger is not one.
MAX_DESCRIPTION_BYTES = 1 << 20


def load_simulation(request: RunRequest, environ: Mapping[str, str] | None = None) -> SimulatedNvml | None:
    """The simulated NVML of this run's GPUs, or None (a real run: the request names no simulation)."""
    if request.simulated_gpus is None:
        return None
    path = Path(request.simulated_gpus)
    with path.open("rb") as handle:
        data = handle.read(MAX_DESCRIPTION_BYTES + 1)
    if len(data) > MAX_DESCRIPTION_BYTES:
        raise ValueError(f"{path} is larger than {MAX_DESCRIPTION_BYTES} bytes; not a simulation description")
    spec = SimulatedGpus.model_validate_json(data)
    env = os.environ if environ is None else environ
    given = env.get(SIMULATED_DEVICES_ENV)
    visible = None if given is None else [u.strip() for u in given.split(",") if u.strip()]
    beside = path.with_name(SIMULATION_TRACE_FILE)  # trace=PATH: a recorded trace drives the power
    trace = recorded_trace(json.loads(beside.read_text(encoding="utf-8"))) if beside.is_file() else None
    return SimulatedNvml(spec, only=request.gpu_uuids, visible=visible, trace=trace)


def simulated_meter(sim: SimulatedNvml, interval_s: float, sampler: str) -> EnergyMeter:
    """The meter on the simulated GPUs (the CPU packages' RAPL counters are read as always: the
    CPU really ran). Zeus and CodeCarbon read the real NVML, which has no simulated GPU."""
    if sampler in ("zeus", "codecarbon"):
        raise SamplerUnavailable(f"energy_sampler {sampler} reads the real NVML; it cannot measure simulated GPUs")
    return EnergyMeter(sim.open, interval_s, cpu_factory=cpu_packages)


class SimulatedEngine:
    """The run's engine, unchanged, with each batch it runs told to the simulator (load power)."""

    def __init__(self, engine: Engine, sim: SimulatedNvml) -> None:
        self._engine = engine
        self._sim = sim

    def load(
        self,
        config: ExperimentConfig,
        model_source: str,
        adapter_source: str | None = None,
        dirs: RunDirs | None = None,
    ) -> None:
        self._engine.load(config, model_source, adapter_source, dirs=dirs)

    def batch_size(self) -> int:
        return self._engine.batch_size()

    def prepare(self, prompts: list[str]) -> object:
        return self._engine.prepare(prompts)

    def generate(self, batch: object) -> BatchObservation:
        self._sim.check_devices()  # a batch on a lost GPU fails, as its first kernel would
        self._sim.busy(True)
        try:
            return self._engine.generate(batch)
        finally:
            self._sim.busy(False)

    def synchronize(self) -> None:
        self._engine.synchronize()

    def prefix_cache(self) -> bool | None:
        return self._engine.prefix_cache()

    def reset_prefix_cache(self) -> bool:
        return self._engine.reset_prefix_cache()

    def effective(self) -> dict[str, str | int | float | bool | None]:
        return self._engine.effective()

    def passthrough(self) -> dict[str, str]:
        return self._engine.passthrough()

    def n_parameters(self) -> int | None:
        return self._engine.n_parameters()

    def peak_device_memory_mb(self) -> float | None:
        return self._engine.peak_device_memory_mb()

    def environment(self) -> AgentEnvironment:
        return self._engine.environment()


def simulated_engines(factory: Callable[[str], Engine], sim: SimulatedNvml) -> Callable[[str], Engine]:
    """``factory``'s engines, each wrapped so that its batches drive the simulator."""
    return lambda name: SimulatedEngine(factory(name), sim)


def write_ledger(path: Path, sim: SimulatedNvml, window: Window | None, output_tokens: int | None) -> None:
    """The simulator's ground truth beside the result (``window``: the meter's, None if it never opened)."""
    bounds = None if window is None or window.end <= window.start else (window.start, window.end)
    write_atomic(path, json.dumps(ledger(sim, bounds, output_tokens), indent=2))
