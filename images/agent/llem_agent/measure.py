"""The measurement loop, engine-agnostic: load, warm up, measure, assemble the result."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

from llem_agent import environment
from llem_agent.coldstart import download_note, measure_cold_start
from llem_agent.contract import (
    ColdStartReport,
    ExperimentConfig,
    ExperimentResult,
    Memory,
    PhaseTimings,
    RunRequest,
    WarmupReport,
)
from llem_agent.energy import EnergyMeter, WindowWork
from llem_agent.engines.base import Engine, RunDirs
from llem_agent.metrics import (
    BatchObservation,
    latency,
    prefix_cache_flags,
    prefix_cache_report,
    request_records,
    throughput,
    untimed_reasons,
)
from llem_agent.prompts import PromptSets, load_prompt_sets
from llem_agent.warmup import run_warmup

PhaseCallback = Callable[[str], None]


class GpuNotVisible(RuntimeError):
    """The run was given GPUs but the container cannot see them (runtime or driver problem),
    or it sees GPUs it was not given (and holds no lock for)."""


def check_visible_gpus(given: list[str] | None, visible: list[str], runner: str) -> None:
    """The agent sees exactly the GPUs it was given (by UUID): in a container, no more and no
    fewer; on the host (local runner) NVML sees every GPU, so only none may be missing.
    ``given`` None: a standalone run (compose), which uses whatever it sees."""
    if given is None:
        return
    missing = sorted(set(given) - set(visible))
    if missing:
        raise GpuNotVisible(
            f"the host gave this run GPUs {missing} but NVML here does not see them (sees {sorted(visible)}); "
            "check the NVIDIA container runtime and the driver"
        )
    extra = sorted(set(visible) - set(given))
    if runner == "docker" and extra:
        what = "a CPU run" if not given else "this run"
        raise GpuNotVisible(
            f"{what} sees GPUs it was not given and holds no lock for: {extra} (is nvidia Docker's default runtime "
            "and NVIDIA_VISIBLE_DEVICES unset?)"
        )


def batches(prompts: list[str], size: int) -> list[list[str]]:
    """Split ``prompts`` into consecutive batches of ``size`` (the last may be shorter)."""
    return [prompts[i : i + size] for i in range(0, len(prompts), size)]


def _warm_up(
    engine: Engine,
    sets: PromptSets,
    config: ExperimentConfig,
    *,
    meter: EnergyMeter,
    on_progress: Callable[[], None],
    on_patience: Callable[[float], None],
    sleep: Callable[[float], None],
    simulated: bool = False,
) -> tuple[WarmupReport, bool | None, bool | None]:
    """Warm-up on its own prompts, then an empty prefix cache for a cold window.

    Returns the report, whether the engine keeps a prefix cache, and whether it was emptied
    (None: not attempted). The thermal-floor pause doubles as the loaded-idle measurement
    (model resident, no work)."""
    warmed = run_warmup(
        engine,
        sets.warmup,
        config.warmup,
        on_progress=on_progress,
        sleep=lambda s: meter.loaded_idle(s, sleep),
        prompt_source=sets.warmup_source,
        gpu=True if simulated else None,  # simulated GPUs get their thermal floor, the engine runs on the CPU
    )
    if warmed.slowest_batch_s:
        on_patience(warmed.slowest_batch_s)  # a measured batch may take as long: not a hang
    keeps_cache = engine.prefix_cache()
    # A cold window starts from an empty cache: warm-up shared no prompt with it, and whatever
    # warm-up (or a prefix the dataset's prompts share) left behind is dropped where it can be.
    warm = config.warmup.prefix_cache == "warm"
    reset = engine.reset_prefix_cache() if keeps_cache is not False and not warm else None
    return warmed, keeps_cache, reset


def model_inputs(request: RunRequest) -> tuple[str, str | None, RunDirs]:
    """What an engine loads for ``request``: the model, the adapter, the engine directories."""
    config = request.config
    source = request.model_path or config.model
    adapter = request.adapter_path or (config.lora.adapter_id if config.lora else None)
    return source, adapter, RunDirs(engine_cache=request.engine_cache_dir, prebuilt_engine=request.engine_path)


def _load(
    request: RunRequest,
    engine_factory: Callable[[str], Engine],
    meter: EnergyMeter,
    first_prompt: str,
    on_progress: Callable[[], None],
    *,
    simulated: bool = False,
) -> tuple[Engine, ColdStartReport | None]:
    """The engine, imported and loaded; with ``cold_start`` the load and a first request of
    ``first_prompt`` are measured as a window of their own (:mod:`llem_agent.coldstart`).
    ``simulated``: the GPUs are simulated, so the engine runs on the CPU."""
    config = request.config
    source, adapter, dirs = model_inputs(request)

    def load() -> Engine:
        engine = engine_factory(config.engine)  # imports the engine's stack: part of load time
        engine.load(config, source, adapter, dirs=dirs)
        if request.gpus and engine.effective().get("device") != "cuda" and not simulated:
            raise GpuNotVisible(f"the host gave this run GPUs {request.gpus} but the engine sees none")
        return engine

    if not config.cold_start:
        return load(), None
    engine, cold = measure_cold_start(meter, load, first_prompt, download_note(source))
    on_progress()
    return engine, cold


def run_measurement(
    request: RunRequest,
    engine_factory: Callable[[str], Engine],
    meter: EnergyMeter,
    on_phase: PhaseCallback,
    *,
    base_dir: Path | None = None,
    on_progress: Callable[[], None] = lambda: None,
    on_patience: Callable[[float], None] = lambda batch_s: None,
    sleep: Callable[[float], None] = time.sleep,
    visible_gpus: Callable[[], list[str]] = lambda: [],
    simulated: bool = False,
) -> ExperimentResult:
    """Execute one run and return its result; raises on any failure.

    ``simulated``: the run's GPUs are simulated (the meter's NVML is a simulator, the engine runs
    on the CPU); the result says so.

    ``load_s`` spans reading prompts, importing the engine and loading the model (with
    ``cold_start``, the first request too, which ``cold_start`` times on its own);
    ``measure_s`` is the energy window, bracketed by device synchronisation; every batch
    is tokenized before it opens, so the window holds generation work only.
    """
    config = request.config
    check_visible_gpus(request.gpu_uuids, visible_gpus(), request.runner)
    on_phase("baseline")  # idle power, before the model is on the device
    meter.measure_baseline(config.baseline, Path(request.baseline_cache_dir) if request.baseline_cache_dir else None)
    on_phase("load")
    t0 = time.perf_counter()
    warm_cache = config.warmup.prefix_cache == "warm"
    sets = load_prompt_sets(config.dataset, config.random_seed, base_dir, request.dataset_path, warm_cache=warm_cache)
    prompts = sets.measured
    engine, cold = _load(request, engine_factory, meter, sets.warmup[0], on_progress, simulated=simulated)
    t_loaded = time.perf_counter()

    on_phase("warmup")
    warmed, keeps_cache, reset = _warm_up(
        engine,
        sets,
        config,
        meter=meter,
        on_progress=on_progress,
        on_patience=on_patience,
        sleep=sleep,
        simulated=simulated,
    )
    t_warm = time.perf_counter()

    on_phase("measure")
    measured = batches(prompts, engine.batch_size())
    prepared = [engine.prepare(batch) for batch in measured]  # tokenizing is not what we measure
    observations: list[BatchObservation] = []
    spans: list[tuple[float, float, float]] = []
    meter.start()
    window_start, window_started_at = time.perf_counter(), time.time()
    for ready in prepared:
        begin = time.perf_counter() - window_start
        observation = engine.generate(ready)
        end = time.perf_counter() - window_start
        first = min((times[0] for times in observation.token_times_s if times), default=end - begin)
        spans.append((begin, begin + first, end))
        observations.append(observation)
        on_progress()
    engine.synchronize()
    window_s = time.perf_counter() - window_start
    records = request_records(observations)
    output_tokens = sum(r.output_tokens for r in records)
    input_tokens = sum(r.input_tokens for r in records)
    static = all(o.static for o in observations)
    energy = meter.stop(WindowWork(output_tokens, input_tokens, len(records), spans, static_batches=static))
    cache = prefix_cache_report(
        records,
        warm=warm_cache,
        warmup_prompts=sets.warmup_source if warmed.batches else None,
        engine_cache=keeps_cache,
        reset=reset,
    )
    energy = energy.model_copy(update={"flags": [*energy.flags, *prefix_cache_flags(cache, len(records))]})

    on_phase("report")
    n_params = engine.n_parameters()
    return ExperimentResult(
        run_id=request.run_id,
        config_hash=request.config_hash,
        engine=config.engine,
        model=config.model,
        runner=request.runner,
        effective=engine.effective(),
        n_requests=len(records),
        n_batches=len(measured),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        timings=PhaseTimings(
            load_s=t_loaded - t0, warmup_s=t_warm - t_loaded, measure_s=window_s, window_started_at=window_started_at
        ),
        warmup=warmed,
        model_parameters=n_params,
        flops_estimate=None if n_params is None else 2.0 * n_params * (input_tokens + output_tokens),
        throughput=throughput(records, window_s),
        latency=latency(records, untimed_reasons(observations)),
        energy=energy,
        memory=Memory(
            peak_device_mb=engine.peak_device_memory_mb(),
            peak_host_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        ),
        environment=engine.environment().model_copy(
            update={
                "uid": os.getuid(),
                "gpus": meter.device_facts(),
                "cpu_model": environment.cpu_model(),
                "cpus_available": environment.cpus_available(),
                "container_memory_limit_mb": environment.memory_limit_mb(),
                "container_cpu_quota": environment.cpu_quota(),
                "gpus_simulated": simulated,
            }
        ),
        requests=records,
        prefix_cache=cache,
        cold_start=cold,
        passthrough=engine.passthrough() or None,
    )
