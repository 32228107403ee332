"""What the agent writes back: ``result.json`` on success, ``error.json`` on failure.

Units are in every field name. Latencies are seconds, energies joules, memory MiB.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RESULT_SCHEMA_VERSION = "1.0"


class _Frozen(BaseModel):
    # Built at the first use, not at import: nobody reads a result before a run has run, and the
    # host's command then builds them while the run's agent starts (llem.summary's prefetch).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Distribution(_Frozen):
    """Summary of a sample of values (seconds for latencies). None when the sample is empty."""

    n: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    min: float | None
    max: float | None


class PhaseTimings(_Frozen):
    """Wall time of each agent phase, in seconds.

    ``load_s`` covers importing the engine and loading model and tokenizer; ``warmup_s``
    includes the thermal floor. The host uses these to separate its own overhead from the
    agent's work.
    """

    load_s: float
    warmup_s: float
    measure_s: float
    window_started_at: float | None = Field(
        default=None,
        description="Unix time the measurement window opened: with measure_s, when this run was measured "
        "(runs measured in parallel are found by their overlapping windows).",
    )


class WarmupReport(_Frozen):
    """What warmup did before the window opened."""

    mode: Literal["fixed", "cv", "disabled"]
    prompts: int
    batches: int
    converged: bool | None = Field(default=None, description="CV mode: whether latency settled before max_prompts.")
    final_cv: float | None = None
    thermal_floor_s: float = 0.0
    thermal_floor_note: str | None = None
    prompt_source: Literal["held_out", "marked", "measured"] | None = Field(
        default=None,
        description="Where warm-up's prompts came from: held_out (the source's prompts after the measured ones), "
        "marked (copies of the measured prompts behind a distinct marker: the source had none to spare), "
        "measured (the measured prompts themselves: warmup.prefix_cache: warm).",
    )
    slowest_batch_s: float | None = Field(default=None, description="The slowest warm-up batch, seconds.")


class RequestRecord(_Frozen):
    """One measured request. Token times are seconds since its batch started."""

    index: int
    input_tokens: int
    output_tokens: int
    ttft_s: float | None
    e2e_latency_s: float
    token_times_s: list[float] = Field(
        description="Every output token's time; only [first, last] where token_times_complete is false."
    )
    token_times_complete: bool = Field(
        default=True, description="False where the engine exposes only first and last token times (vLLM)."
    )
    cached_prompt_tokens: int | None = Field(
        default=None,
        description="Prompt tokens the engine served from its prefix / KV-block cache instead of computing "
        "them (None: the engine does not report it).",
    )


class DeviceEnergy(_Frozen):
    """Energy of one device over the measured window: its cumulative counter (None where the
    device has none) and, next to it, the integral of its sampled power."""

    index: int
    name: str
    energy_j: float | None
    trace_energy_j: float | None = None
    mean_power_w: float | None = None
    peak_power_w: float | None = None
    power_reading: Literal["instant", "average_1s"] | None = Field(
        default=None,
        description="Which power reading the trace holds: instant (NVML's instantaneous field), or average_1s "
        "(nvmlDeviceGetPowerUsage, a one-second average on Ampere except GA100 and newer).",
    )
    trace_shift_s: float = Field(
        default=0.0,
        description="How far the samples were moved back before integrating: 0.5 s for one-second averages "
        "(centred half a second before they are read), which corrects the trace instead of widening the "
        "counter-trace comparison.",
    )
    counter_scope: Literal["gpu", "module"] = Field(
        default="gpu", description="module: a Grace Hopper / Blackwell superchip's counter covers GPU + CPU + memory."
    )
    trace_scope: Literal["gpu", "module"] = Field(
        default="gpu",
        description="What the power trace covers; the counter and trace are compared only where the scopes match.",
    )


class ValidityFlag(_Frozen):
    """A reason to doubt a measurement, with its evidence."""

    code: Literal[
        "short_window",
        "sampling_gap",
        "counter_reset",
        "throttled",
        "temperature_drift",
        "counter_trace_disagree",
        "stale_baseline",
        "prefix_cache_hit",
        "prefix_cache_warm",
    ]
    message: str


class PrefixCacheReport(_Frozen):
    """What a prefix / KV-block cache did to the measured window (vLLM's prefix caching and
    TensorRT-LLM's block reuse serve a repeated prompt prefix without computing its prefill)."""

    mode: Literal["cold", "warm"] = Field(
        description="cold: warm-up shared no prompt with the window and the cache was emptied where the engine "
        "allows; warm: the study asked for a warm cache (warmup.prefix_cache: warm)."
    )
    warmup_prompts: Literal["held_out", "marked", "measured"] | None = Field(
        default=None, description="Where warm-up's prompts came from (see warmup.prompt_source)."
    )
    engine_cache: bool | None = Field(
        default=None,
        description="Whether the engine keeps a prefix cache across requests (None: unknown).",
    )
    reset_after_warmup: bool | None = Field(
        default=None,
        description="True: emptied after warm-up; False: the engine could not be asked to; None: not attempted "
        "(no cache, or a warm cache on purpose).",
    )
    prompt_tokens: int = Field(description="Prompt tokens of the measured requests.")
    cached_prompt_tokens: int | None = Field(
        default=None, description="Of those, served from the cache (None: the engine does not report it)."
    )
    requests_with_cached_tokens: int | None = None


BaselineSource = Literal["measured", "cache", "cache_validated", "remeasured_after_drift"]


class BaselineReport(_Frozen):
    """Idle power of the run's devices: before the model loaded (no CUDA context, the GPU in a
    low power state) and, where the thermal-floor pause ran, after it loaded (context and weights
    resident). ``adjusted_with`` says which one ``adjusted_energy_j`` subtracts."""

    strategy: Literal["validated", "cached", "fresh"]
    source: BaselineSource
    power_w: list[float] = Field(description="Idle power per device before the model loaded.")
    total_power_w: float
    duration_s: float
    measured_at: float = Field(description="Unix time of the measurement.")
    age_s: float
    loaded_power_w: list[float] | None = Field(
        default=None, description="Idle power per device with the model loaded (second half of the thermal floor)."
    )
    loaded_total_power_w: float | None = None
    loaded_duration_s: float | None = None
    adjusted_with: Literal["pre_load", "post_load"] = Field(
        default="pre_load",
        description="post_load where the loaded idle power was measured (the floor a served model really "
        "has), else pre_load.",
    )

    @property
    def subtracted_power_w(self) -> float:
        """The idle power ``adjusted_energy_j`` subtracts."""
        if self.adjusted_with == "post_load" and self.loaded_total_power_w is not None:
            return self.loaded_total_power_w
        return self.total_power_w


class ExternalEnergyReport(_Frozen):
    """What an optional sampler (003 ``energy_sampler``: zeus, codecarbon) measured."""

    sampler: Literal["zeus", "codecarbon"]
    version: str | None = None
    energy_j: float | None
    parts_j: dict[str, float] = Field(default_factory=dict, description="gpu_j, cpu_j, ram_j / dram_j as reported.")
    note: str | None = None


class EnergyReport(_Frozen):
    """Energy over the measured window; ``energy_j`` is None with a reason when unobservable.

    ``energy_j`` comes from the devices' energy counters where they have one, else from the
    integrated power trace (``source`` says which). Denominators are in the names.
    """

    energy_j: float | None
    source: Literal["nvml_total_energy", "nvml_power_trace", "zeus", "codecarbon"] | None
    unavailable_reason: str | None = None
    devices: list[DeviceEnergy] = Field(default_factory=list)
    trace_energy_j: float | None = None
    j_per_output_token: float | None = None
    j_per_token: float | None = Field(default=None, description="Per input + output token.")
    j_per_request: float | None = None
    mean_power_w: float | None = None
    peak_power_w: float | None = None
    prefill_energy_j: float | None = Field(
        default=None,
        description="Trace energy while batches awaited their first token, where that is a measurement "
        "(static batches, instantaneous readings, prefills of at least 5 samples); else None, and "
        "prefill_decode_note says why.",
    )
    decode_energy_j: float | None = Field(default=None, description="Trace energy after the first token of each batch.")
    prefill_decode_note: str | None = Field(
        default=None, description="How prefill and decode energy were obtained, or why they are not reported."
    )
    sample_interval_s: float | None = None
    n_samples: int = 0
    power_capped_fraction: float | None = Field(
        default=None,
        description="Share of samples whose clocks the software power cap held back: routine at full load, "
        "not a validity problem (thermal and hardware slowdowns are flagged as throttled).",
    )
    flags: list[ValidityFlag] = Field(default_factory=list)
    baseline: BaselineReport | None = None
    adjusted_energy_j: float | None = Field(
        default=None, description="energy_j minus the idle baseline power over the window."
    )
    baseline_note: str | None = None
    counter_step_s: float | None = Field(
        default=None, description="How often the energy counter moved, seen as the window opened (None: unseen)."
    )
    counter_aligned: bool | None = Field(
        default=None,
        description="Both counter reads were taken on a step of the counter (the window opens and closes on "
        "one); False where a counter did not move within 0.25 s. None without counters.",
    )
    energy_uncertainty_j: float | None = Field(
        default=None,
        description="What the counter's steps leave uncertain in energy_j: two polls (1 ms) of mean power where "
        "aligned, else two steps; plus the counter's 1 mJ resolution at each end.",
    )
    cpu_energy_j: float | None = Field(default=None, description="CPU packages over the window, from RAPL.")
    cpu_energy_note: str | None = None
    external: ExternalEnergyReport | None = Field(
        default=None, description="The optional sampler's own figures; energy_j comes from it when set."
    )


class ColdStartReport(_Frozen):
    """The cold start (002 ``cold_start: true``): this run's fresh process importing the engine,
    loading the model and serving its first request, measured as a window of its own before
    warm-up. Every run is a process of its own, so nothing was loaded before; the weights may
    still be in the OS page cache. The rest of the result describes the warm window."""

    load_s: float = Field(description="Importing the engine and loading model, tokenizer and adapter.")
    first_request_s: float = Field(
        description="The first request (the first warm-up prompt, alone), end to end, tokenizing included."
    )
    first_ttft_s: float | None = Field(
        default=None,
        description="Its time to first token, from the generate call; None where the engine timed no token "
        "(ttft_missing_reason says why).",
    )
    time_to_first_token_s: float | None = Field(
        default=None,
        description="From the start of loading to the first request's first token: what a caller of a cold "
        "process waits.",
    )
    ttft_missing_reason: str | None = None
    energy: EnergyReport = Field(
        description="Load and first request, from the meter that measures the warm window (the window aligned "
        "on its counter's steps); energy_j null with unavailable_reason where it could not bracket the load. "
        "Per-token figures are null: the window's work is loading."
    )
    note: str | None = Field(
        default=None, description="What the window holds beyond loading from local files (a download of the model)."
    )


class Throughput(_Frozen):
    output_tokens_per_s: float
    total_tokens_per_s: float
    requests_per_s: float


class Latency(_Frozen):
    ttft_s: Distribution
    inter_token_s: Distribution
    e2e_s: Distribution
    inter_token_source: Literal["token_gaps", "request_means", "mixed"] = Field(
        default="token_gaps",
        description="token_gaps: every gap between consecutive tokens; request_means: one mean gap per request "
        "(engines that expose only first and last token times).",
    )
    ttft_missing_reason: str | None = Field(
        default=None,
        description="Why some requests have no TTFT (the engine returned no request metrics for them).",
    )


class Memory(_Frozen):
    """Peak memory: device memory allocated by the engine, and host resident set size."""

    peak_device_mb: float | None
    peak_host_rss_mb: float


class GpuFacts(_Frozen):
    """One GPU as NVML reported it inside the run's container."""

    index: int
    name: str
    uuid: str
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    power_limit_w: float | None = None
    persistence_mode: bool | None = None


class AgentEnvironment(_Frozen):
    """Facts about the container the run happened in (the host's are in the study's host.json)."""

    python: str
    engine_version: str
    torch_version: str | None
    transformers_version: str | None
    device: str
    device_names: list[str]
    uid: int | None = Field(default=None, description="User id the agent ran as (never 0 in llem's containers).")
    cuda_runtime: str | None = None
    gpus: list[GpuFacts] = Field(default_factory=list)
    cpu_model: str | None = None
    cpus_available: int | None = None
    container_memory_limit_mb: float | None = None
    container_cpu_quota: float | None = None
    gpus_simulated: bool = Field(
        default=False,
        description="True: the run's GPUs were simulated (llem run --simulate-gpus); its GPU energy, power and "
        "telemetry are a simulator's, never a measurement.",
    )


class ExperimentResult(_Frozen):
    """Everything one run measured. Written atomically as ``result.json``."""

    schema_version: str = RESULT_SCHEMA_VERSION
    run_id: str
    config_hash: str
    engine: str
    model: str
    runner: Literal["docker", "local"] = Field(
        default="docker", description="docker: in the engine's container; local: a process on the host."
    )
    effective: dict[str, str | int | float | bool | None] = Field(
        description="Engine defaults resolved at run time (dtype, batch size, ...)."
    )
    n_requests: int
    n_batches: int
    input_tokens: int
    output_tokens: int
    timings: PhaseTimings
    warmup: WarmupReport | None = None
    model_parameters: int | None = None
    flops_estimate: float | None = Field(
        default=None,
        description="2 x parameters x (input + output tokens): the forward-pass rule of thumb, no attention term.",
    )
    throughput: Throughput
    latency: Latency
    energy: EnergyReport
    memory: Memory
    environment: AgentEnvironment
    requests: list[RequestRecord]
    prefix_cache: PrefixCacheReport | None = None
    cold_start: ColdStartReport | None = Field(
        default=None, description="The cold start, beside the warm window (cold_start: true); None: not measured."
    )
    passthrough: dict[str, str] | None = Field(
        default=None,
        description="Where each passthrough_kwargs key went: the engine call that received it (generate, "
        "from_pretrained, BitsAndBytesConfig; vLLM's LLM or SamplingParams; TensorRT-LLM's LLM or SamplingParams).",
    )


class RunError(_Frozen):
    """Why a run failed. Written atomically as ``error.json``."""

    schema_version: str = RESULT_SCHEMA_VERSION
    run_id: str
    type: str
    message: str
    phase: str
    traceback: str
