"""``llem.Options``: how and where a study runs on this host, one frozen value that the Python
API takes and the command line fills from its flags (``llem run --help`` names each)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .container import DEFAULT_PIDS_LIMIT
from .locks import DEFAULT_LOCK_DIR
from .study import MAX_EXPERIMENTS, MAX_RUNS, ExperimentOrder

Failures = Literal["breaker", "fail_fast", "never"]


@dataclass(frozen=True)
class Options:
    """Host settings of one study run; ``None`` means the study's ``study_execution``, the user
    config or llem's default, in that order (the same precedence as the command line's flags)."""

    results_dir: str | Path | None = None  # --results-dir (default: user config output.results_dir, else ./results)
    name: str | None = None  # --name (default: name: in the file, else the file name)
    cycles: int | None = None  # --cycles
    order: ExperimentOrder | None = None  # --order
    images: Mapping[str, str] = field(default_factory=dict)  # --image ENGINE=IMAGE, per engine
    runner: Literal["docker", "local"] | None = None  # --runner, for every engine
    gpus: str | None = None  # --gpus: NVML indices or UUIDs, e.g. "0,1"
    run_timeout_s: float = 3600.0  # --run-timeout
    stall_timeout_s: float = 600.0  # --stall-timeout
    sample_interval_s: float = 0.1  # --sample-interval
    container_memory: str | None = None  # --container-memory: a size or "none" (default 90% of memory)
    pids_limit: int = DEFAULT_PIDS_LIMIT  # --pids-limit (0: no limit)
    lock_dir: str | Path | None = DEFAULT_LOCK_DIR  # --lock-dir; None: take no device locks (--no-lock)
    wait_for_devices: bool = True  # False: --no-wait
    failures: Failures = "breaker"  # the study's circuit breaker; --fail-fast; --no-circuit-breaker
    timeout_hours: float | None = None  # --timeout: the whole study's wall clock
    pull: bool = True  # False: --no-pull
    resume: bool = False  # --resume: the newest unfinished study of this name
    resume_dir: str | Path | None = None  # --resume-dir
    max_experiments: int = MAX_EXPERIMENTS  # --max-experiments
    max_runs: int = MAX_RUNS  # --max-runs
    profile: Literal["quick", "publication"] | None = None  # --profile: execution-protocol shorthand (profiles.py)
