"""Warmup before the measured window: fixed count, or until latency settles (CV mode), then
the thermal floor: a pause that lets a GPU's temperature plateau before measurement."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Literal

from llem_agent.contract import WarmupConfig, WarmupReport
from llem_agent.engines.base import Engine
from llem_agent.prompts import WarmupSource


def coefficient_of_variation(values: list[float]) -> float:
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if len(values) > 1 and mean > 0 else math.inf


def run_warmup(
    engine: Engine,
    prompts: list[str],
    config: WarmupConfig,
    *,
    on_progress: Callable[[], None] = lambda: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.perf_counter,
    prompt_source: WarmupSource | None = None,
    gpu: bool | None = None,
) -> WarmupReport:
    """Warm ``engine`` with full-size batches drawn from ``prompts``, warm-up's own pool
    (:class:`llem_agent.prompts.PromptSets`: disjoint from the measured prompts unless the
    study asks for a warm prefix cache), cycled when it is smaller than warm-up needs.

    Fixed mode runs batches covering ``n_warmup`` prompts. CV mode runs batches until the
    coefficient of variation of the last ``window_size`` batch latencies is below
    ``cv_threshold`` (after at least ``min_prompts``, at most ``max_prompts`` prompts).
    Every batch is timed: the slowest tells the host how long a measured batch may take.
    The thermal floor applies only on a GPU: a CPU has no GPU temperature to settle. ``gpu``:
    whether the run has GPUs (None: the engine's device says; True for simulated GPUs, whose
    engine runs on the CPU).
    """
    size = engine.batch_size()
    if not config.enabled:
        return WarmupReport(mode="disabled", prompts=0, batches=0, prompt_source=prompt_source)

    def batch(i: int) -> list[str]:
        return [prompts[(i * size + k) % len(prompts)] for k in range(size)]

    latencies: list[float] = []

    def timed(i: int) -> None:
        start = clock()
        engine.generate(engine.prepare(batch(i)))
        latencies.append(clock() - start)
        on_progress()

    converged: bool | None = None
    cv: float | None = None
    mode: Literal["fixed", "cv"] = "cv" if config.convergence_detection else "fixed"
    if mode == "cv":
        converged = False
        while len(latencies) * size < config.max_prompts:
            timed(len(latencies))
            if len(latencies) * size >= config.min_prompts and len(latencies) >= config.window_size:
                cv = coefficient_of_variation(latencies[-config.window_size :])
                if cv < config.cv_threshold:
                    converged = True
                    break
    else:
        for i in range(math.ceil(config.n_warmup / size) if config.n_warmup > 0 else 0):
            timed(i)
    n_batches = len(latencies)
    engine.synchronize()
    on_gpu = engine.effective().get("device") == "cuda" if gpu is None else gpu
    if on_gpu:
        sleep(config.thermal_floor_seconds)
    return WarmupReport(
        mode=mode,
        prompts=n_batches * size,
        batches=n_batches,
        converged=converged,
        final_cv=cv if cv is None or math.isfinite(cv) else None,
        thermal_floor_s=config.thermal_floor_seconds if on_gpu else 0.0,
        thermal_floor_note=None if on_gpu else "not applied: no GPU (CPU run)",
        prompt_source=prompt_source,
        slowest_batch_s=max(latencies, default=None),
    )
