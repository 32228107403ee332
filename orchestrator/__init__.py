"""llem: measure the energy, throughput and latency of LLM inference, one container per run.

The Python API (the ``llem`` command is a layer over it)::

    import llem

    study = llem.run_study("study.yaml", llem.Options(results_dir="results"))
    for run in study.runs:
        print(run.run_id, run.status, run.result and run.result.energy.energy_j)
    result = llem.run_experiment({"engine": "pytorch", "model": "gpt2"})
    again = llem.load_study(study.directory)

Names are imported on first use, so that ``llem --version`` and each worker start quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "run_study": "api",
    "run_experiment": "api",
    "load_study": "api",
    "StudyResults": "api",
    "RunResult": "api",
    "Events": "api",
    "Options": "options",
    "LlemError": "errors",
    "ConfigError": "errors",
    "EnvironmentProblem": "errors",
    "Interrupted": "errors",
    "RunFailed": "errors",
}
__all__ = [  # noqa: RUF022 - the API first, then its errors
    "__version__",
    "run_study",
    "run_experiment",
    "load_study",
    "StudyResults",
    "RunResult",
    "Events",
    "Options",
    "LlemError",
    "ConfigError",
    "EnvironmentProblem",
    "Interrupted",
    "RunFailed",
]

if TYPE_CHECKING:
    from .api import Events, RunResult, StudyResults, load_study, run_experiment, run_study
    from .errors import ConfigError, EnvironmentProblem, Interrupted, LlemError, RunFailed
    from .options import Options


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
