"""What running a study takes and gives, below any one way of running it: the host's options of
one invocation, the progress events a runner reports, and the outcome of each run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llem_agent.contract import ExperimentResult
from llem_agent.contract.simulation import SimulatedGpus

from .claims import DEFAULT_STALE_AFTER_S
from .manifest import RunEntry
from .plan import PlannedRun
from .userconfig import MeasurementFactors


@dataclass(frozen=True)
class HostSettings:
    """Host settings of one invocation (CLI flags, environment), not part of the study."""

    results_root: Path
    images: dict[str, str]
    run_timeout_s: float
    gpu_indices: tuple[int, ...]
    lock_dir: Path | None
    lock_wait_s: float | None
    hf_home: Path
    baseline_cache: Path | None = None
    stall_timeout_s: float = 600.0
    sample_interval_s: float = 0.1
    container_memory: str | None = None
    pids_limit: int | None = None  # processes + threads per run container (None: no limit)
    max_consecutive_failures: int = 10
    circuit_breaker_cooldown_s: float = 60.0
    wall_clock_limit_s: float | None = None
    factors: MeasurementFactors = field(default_factory=MeasurementFactors)
    engine_cache: Path | None = None  # TensorRT-LLM engine builds, mounted into tensorrt runs
    gpu_uuids: dict[int, str] = field(default_factory=dict)  # index -> UUID of every GPU the study may use
    cpuset: tuple[int, ...] = ()  # CPU cores this process's CPU runs are pinned to (a parallel slot)
    claim_stale_s: float = DEFAULT_STALE_AFTER_S  # a worker's claim not refreshed for this long is a dead worker's
    # Pauses between runs and between cycles; None: the study's study_execution (None there: 0).
    config_gap_s: float | None = None
    cycle_gap_s: float | None = None
    profile: str | None = None  # --profile the study was planned with (recorded in the manifest's protocol)
    simulation: SimulatedGpus | None = None  # --simulate-gpus: the study's GPUs are simulated ones

    def gaps_s(self, execution: Any) -> tuple[float, float]:
        """The pauses this invocation makes (between runs, between cycles) for a study's execution."""
        config = self.config_gap_s if self.config_gap_s is not None else execution.config_gap_seconds
        cycle = self.cycle_gap_s if self.cycle_gap_s is not None else execution.cycle_gap_seconds
        return float(config or 0.0), float(cycle or 0.0)


class LoopEvents(Protocol):
    """Progress callbacks; the rich display implements them, tests may record them."""

    def run_started(self, run: PlannedRun, position: int, total: int) -> None: ...

    def run_finished(self, outcome: RunOutcome) -> None: ...

    def waiting_for_devices(self, names: list[str]) -> None: ...

    def pausing(self, seconds: float) -> None: ...

    def run_phase(self, run: PlannedRun, phase: str, detail: str) -> None: ...


@dataclass(frozen=True)
class RunOutcome:
    run: PlannedRun
    entry: RunEntry
    result: ExperimentResult | None


class NoEvents:
    """LoopEvents that nobody follows (a study loop that only plans, a quiet test)."""

    def run_started(self, *args: object) -> None: ...

    def run_finished(self, *args: object) -> None: ...

    def waiting_for_devices(self, *args: object) -> None: ...

    def pausing(self, *args: object) -> None: ...

    def run_phase(self, *args: object) -> None: ...

    def note(self, *args: object) -> None: ...
