"""The cold start (002 ``cold_start: true``): the model loaded and its first request served by
this run's fresh process, measured as a window of its own before warm-up.

Every run is a process of its own (a container, or a process of the local runner), so the
load is always a cold one; with ``cold_start`` it is also measured: the meter that brackets the
warm window brackets engine import, model load and one first request (the first warm-up
prompt, alone), and the result's ``cold_start`` section gives its energy, the load time and
the first request's time to first token beside the warm window. The meter starts every window
afresh, so the warm window that follows keeps the trace, the telemetry and the raw counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from llem_agent.contract import ColdStartReport, EnergyReport
from llem_agent.energy import EnergyMeter, WindowWork
from llem_agent.engines.base import Engine
from llem_agent.metrics import NO_REQUEST_METRICS
from llem_agent.modelfiles import local_model_dir

# The window's work is loading: no per-token figure, and no prefill/decode split of it.
_LOAD_WORK = WindowWork(output_tokens=0, input_tokens=0, n_requests=0, batch_spans=[])
_NOT_SPLIT = "not split: the cold start window is loading and one first request"


def download_note(model_source: str, find_local: Callable[[str], object | None] = local_model_dir) -> str | None:
    """Why the cold start may hold more than loading: the model is in no local directory and
    not in the Hugging Face cache, so loading it downloads it first."""
    if find_local(model_source) is not None:
        return None
    return f"{model_source} was not found locally or in the Hugging Face cache: the load includes downloading it"


def measure_cold_start(
    meter: EnergyMeter,
    load: Callable[[], Engine],
    first_prompt: str,
    note: str | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Engine, ColdStartReport]:
    """``load`` (import the engine, load the model) and one request of ``first_prompt`` inside
    a window of the meter's own; the engine it loaded and what the window measured. Where the
    meter cannot bracket a window before the measured one, the times are still taken and the
    energy is null with the reason."""
    refusal = meter.cannot_bracket_twice()
    if refusal is None:
        meter.start()
    started = clock()
    engine = load()
    loaded = clock()
    prepared = engine.prepare([first_prompt])
    sent = clock()
    observation = engine.generate(prepared)
    engine.synchronize()
    done = clock()
    if refusal is None:
        energy = meter.stop(_LOAD_WORK).model_copy(update={"prefill_decode_note": _NOT_SPLIT})
    else:
        energy = EnergyReport(energy_j=None, source=None, unavailable_reason=refusal)
    times = observation.token_times_s[0] if observation.token_times_s else []
    first_ttft = times[0] if times else None
    missing = None
    if first_ttft is None:
        generated = sum(observation.output_tokens) > 0
        missing = (observation.untimed_reason or NO_REQUEST_METRICS) if generated else "no output token"
    return engine, ColdStartReport(
        load_s=loaded - started,
        first_request_s=done - loaded,
        first_ttft_s=first_ttft,
        time_to_first_token_s=None if first_ttft is None else sent - started + first_ttft,
        ttft_missing_reason=missing,
        energy=energy,
        note=note,
    )
