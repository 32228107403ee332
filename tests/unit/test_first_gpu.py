"""The second GPU-path review ("Right on the first GPU"): each finding at its seam, as a test
that failed before its fix. Numbers are worked out by hand in the comments."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from llem.devices import Gpu
from llem.dryrun import _verdict, likely_oom
from llem.models import VramEstimate
from llem.onerun import collect
from llem.runner import ContainerOutcome, Liveness
from llem_agent.contract import (
    DatasetConfig,
    EnergyReport,
    ExperimentConfig,
    ExperimentResult,
    RunError,
    RunRequest,
    WarmupConfig,
    config_hash,
)
from llem_agent.energy import EnergyMeter, NvmlBackend, PowerReading, Sampler, WindowWork, energy_report
from llem_agent.energy.external import ZeusSampler
from llem_agent.engines.args import (
    PassthroughError,
    check_passthrough,
    route_passthrough,
    vllm_cpu_kv_cache_bytes,
    vllm_sampling_kwargs,
)
from llem_agent.engines.tensorrt import MPI_LOOPBACK_ENV, TensorRTEngine
from llem_agent.heartbeat import Heartbeat
from llem_agent.measure import run_measurement
from llem_agent.metrics import BEAM_SEARCH_UNTIMED, BatchObservation, latency, request_records, untimed_reasons
from llem_agent.prompts import load_prompt_sets
from llem_agent.telemetry import (
    TEMPERATURE_SLOPE_C_PER_S,
    Sample,
    WindowFacts,
    temperature_slope_c_per_s,
    validity_flags,
)
from tests.unit.test_measure import DummyEngine, no_nvml

# --- 6. beam search invents no latencies -------------------------------------------------


def beam_batch() -> BatchObservation:
    """Two requests of a beam-search batch that returned after 1.5 s, 6 and 4 tokens, no times."""
    return BatchObservation(
        input_tokens=[5, 7],
        output_tokens=[6, 4],
        token_times_s=[[], []],
        complete=False,
        untimed_end_s=1.5,
        untimed_reason=BEAM_SEARCH_UNTIMED,
    )


def test_beam_search_requests_are_untimed_not_stamped_at_the_batch_end():
    records = request_records([beam_batch()])
    assert [r.ttft_s for r in records] == [None, None]  # was 1.5 = e2e
    assert [r.e2e_latency_s for r in records] == [1.5, 1.5]
    lat = latency(records, untimed_reasons([beam_batch()]))
    assert lat.ttft_s.n == 0 and lat.inter_token_s.n == 0  # was 10 gaps of 0 s
    assert lat.e2e_s.p50 == pytest.approx(1.5)
    assert lat.ttft_missing_reason is not None
    assert "2 of 2" in lat.ttft_missing_reason and "beam search" in lat.ttft_missing_reason


def test_untimed_reasons_name_each_cause_once():
    timed = BatchObservation([3], [2], [[0.1, 0.2]])
    no_metrics = BatchObservation([3, 3], [2, 2], [[0.1, 0.3], []], complete=False, untimed_end_s=0.5)
    reasons = untimed_reasons([timed, beam_batch(), no_metrics, beam_batch()])
    assert reasons == [BEAM_SEARCH_UNTIMED, "the engine returned no request metrics for them"]
    assert untimed_reasons([timed]) == []


# --- 1. no prefix-cache hit inside the measured window -----------------------------------


class PrefixCachingEngine(DummyEngine):
    """Caches like vLLM's prefix caching: a prompt seen before is served from the cache (all
    its 3 prompt tokens, as DummyEngine counts them) until the cache is reset."""

    def __init__(self, resettable: bool = True) -> None:
        super().__init__()
        self.cache: set[str] = set()
        self.resettable = resettable
        self.resets = 0

    def generate(self, prompts):
        observation = super().generate(prompts)
        hits = [3 if p in self.cache else 0 for p in prompts]
        self.cache.update(prompts)
        return BatchObservation(
            observation.input_tokens, observation.output_tokens, observation.token_times_s, cached_tokens=hits
        )

    def prefix_cache(self):
        return True

    def reset_prefix_cache(self):
        if self.resettable:
            self.cache.clear()
            self.resets += 1
        return self.resettable


def measure(engine: DummyEngine, **warmup: object) -> ExperimentResult:
    cfg = ExperimentConfig.model_validate(
        {"model": "m", "dataset": {"source": "builtin", "n_prompts": 8}, "warmup": {"n_warmup": 8, **warmup},
         "pytorch": {"batch_size": 4}}
    )  # fmt: skip
    req = RunRequest(run_id="r", study_name="s", cycle=1, config_hash=config_hash(cfg), config=cfg)
    return run_measurement(req, lambda name: engine, EnergyMeter(no_nvml).open(), lambda phase: None)


def test_warm_up_shares_no_prompt_with_the_window_and_the_cache_is_emptied():
    engine = PrefixCachingEngine()
    result = measure(engine)
    warm, measured = engine.calls[:2], engine.calls[2:]
    assert not {p for b in warm for p in b} & {p for b in measured for p in b}  # was: the same 8 prompts
    assert engine.resets == 1
    assert [r.cached_prompt_tokens for r in result.requests] == [0] * 8
    cache = result.prefix_cache
    assert cache is not None and (cache.mode, cache.warmup_prompts, cache.reset_after_warmup) == (
        "cold", "held_out", True
    )  # fmt: skip
    assert (cache.prompt_tokens, cache.cached_prompt_tokens, cache.requests_with_cached_tokens) == (24, 0, 0)
    assert result.warmup is not None and result.warmup.prompt_source == "held_out"
    assert not [f for f in result.energy.flags if f.code.startswith("prefix_cache")]


def test_a_cold_window_served_from_a_cache_anyway_is_flagged():
    # An engine that cannot be emptied, on a dataset whose measured prompts all repeat one text:
    # the window's first batch of 4 caches it, the second batch's 4 requests hit (3 tokens each).
    engine = PrefixCachingEngine(resettable=False)
    original = engine.generate
    engine.generate = lambda prompts: original(["same"] * len(prompts)) if len(engine.calls) >= 2 else original(prompts)
    result = measure(engine)
    assert result.prefix_cache is not None and result.prefix_cache.reset_after_warmup is False
    assert result.prefix_cache.cached_prompt_tokens == 4 * 3
    (flag,) = [f for f in result.energy.flags if f.code == "prefix_cache_hit"]
    assert "4 of 8 measured requests" in flag.message and "12 of 24 prompt tokens" in flag.message


def test_a_warm_cache_asked_for_is_served_and_labelled():
    engine = PrefixCachingEngine()
    result = measure(engine, prefix_cache="warm")
    assert engine.resets == 0
    assert engine.calls[:2] == engine.calls[2:]  # warm-up ran the measured prompts themselves
    assert result.prefix_cache is not None and result.prefix_cache.mode == "warm"
    assert result.prefix_cache.cached_prompt_tokens == 24 and result.prefix_cache.requests_with_cached_tokens == 8
    (flag,) = [f for f in result.energy.flags if f.code.startswith("prefix_cache")]
    assert flag.code == "prefix_cache_warm" and "24 of 24 prompt tokens" in flag.message


def test_a_source_with_no_prompt_to_spare_warms_up_on_marked_copies(tmp_path: Path):
    (tmp_path / "p.jsonl").write_text("".join(f'{{"prompt": "question {i}"}}\n' for i in range(4)))
    sets = load_prompt_sets(DatasetConfig(source="p.jsonl", n_prompts=4), 0, tmp_path)
    assert sets.warmup_source == "marked" and sets.measured == [f"question {i}" for i in range(4)]
    assert sets.warmup == [f"[llem warm-up {i}] question {i}" for i in range(4)]
    # No warm-up prompt starts like a measured one: the first token block of each differs.
    assert not any(w.startswith(m[:5]) for w in sets.warmup for m in sets.measured)


def test_built_in_and_jsonl_sources_split_alike(tmp_path: Path):
    (tmp_path / "p.jsonl").write_text("".join(f'"p{i}"\n' for i in range(10)))
    sets = load_prompt_sets(DatasetConfig(source="p.jsonl", n_prompts=6, order="shuffled"), 3, tmp_path)
    assert sorted(sets.measured) == [f"p{i}" for i in range(6)]  # the first six, shuffled
    assert sets.warmup == ["p6", "p7", "p8", "p9"] and sets.warmup_source == "held_out"
    builtin = load_prompt_sets(DatasetConfig(source="builtin", n_prompts=150), 0)
    assert len(builtin.measured) == 150 and len(builtin.warmup) == 50  # 200 in the set
    assert not set(builtin.measured) & set(builtin.warmup)


# --- 11. long waits are not killed as hung ------------------------------------------------


def test_the_thermal_floor_is_bounded():
    assert WarmupConfig(thermal_floor_seconds=600).thermal_floor_seconds == 600
    for bad in (601, float("inf"), float("nan")):
        with pytest.raises(ValidationError):
            WarmupConfig(thermal_floor_seconds=bad)


def test_warm_up_beats_in_the_background_the_window_only_on_progress(tmp_path: Path):
    path = tmp_path / "heartbeat"
    with Heartbeat(path, interval_s=0.05) as beat:
        beat.phase("warmup")  # a first batch compiling, then the thermal floor: silent for minutes
        first = path.stat().st_mtime_ns
        time.sleep(0.3)
        assert path.stat().st_mtime_ns > first  # was: silent, so killed after the stall timeout
        beat.phase("measure")
        during = path.stat().st_mtime_ns
        time.sleep(0.3)
        assert path.stat().st_mtime_ns == during  # a hung window still goes stale


def test_a_batch_slower_than_the_stall_timeout_is_waited_for(tmp_path: Path):
    path = tmp_path / "heartbeat"
    beat = Heartbeat(path)
    beat.phase("measure")
    liveness = Liveness(path, stall_timeout_s=60.0)
    old = time.time() - 100  # last beat 100 s ago
    os.utime(path, (old, old))
    assert liveness.stale(started_at=old)
    beat.expect(40.0)  # warm-up's slowest batch took 40 s: the agent asks for 3 x 40 = 120 s
    os.utime(path, (old, old))
    assert json.loads(path.read_text())["patience_s"] == 120.0
    assert not liveness.stale(started_at=old)
    older = time.time() - 121
    os.utime(path, (older, older))
    assert liveness.stale(started_at=older)


# --- 2. prefill / decode energy only where it is a measurement ---------------------------


def flat_trace(watts: float, seconds: float, step: float = 0.1, start: float = 0.0) -> list[Sample]:
    return [Sample(start + i * step, 0, watts, 60.0) for i in range(round(seconds / step) + 1)]


def split_of(work: WindowWork, readings: list[PowerReading] | None = None) -> EnergyReport:
    return energy_report(
        ["H100"], flat_trace(500.0, 10.0), start_mj=[0], end_mj=[5_000_000], window=(0.0, 10.0), interval_s=0.1,
        work=work, readings=readings,
    )  # fmt: skip


def test_the_split_is_reported_for_static_batches_with_prefills_the_trace_resolves():
    # Two static batches whose prefills last 1 s each at 500 W: 2 x 500 J prefill, 8 x 500 J decode.
    r = split_of(WindowWork(10, 10, 2, [(0.0, 1.0, 5.0), (5.0, 6.0, 10.0)]))
    assert (r.prefill_energy_j, r.decode_energy_j) == pytest.approx((1000.0, 4000.0))
    assert r.prefill_decode_note is not None and r.prefill_decode_note.startswith("power trace")


@pytest.mark.parametrize(
    ("work", "readings", "why"),
    [
        # vLLM / TensorRT-LLM: "prefill" would end at the first request's first token.
        (WindowWork(10, 10, 2, [(0.0, 1.0, 5.0), (5.0, 6.0, 10.0)], static_batches=False), None, "continuous"),
        # A 30 ms prefill against 100 ms samples is interpolation.
        (WindowWork(10, 10, 2, [(0.0, 0.03, 5.0), (5.0, 6.0, 10.0)]), None, "fewer than 5 samples"),
        # One-second averages cannot resolve a prefill at all.
        (WindowWork(10, 10, 2, [(0.0, 1.0, 5.0), (5.0, 6.0, 10.0)]), [PowerReading("average_1s")], "averages"),
    ],
)
def test_the_split_is_null_with_a_reason_where_it_would_be_interpolation(work, readings, why):
    r = split_of(work, readings)
    assert r.prefill_energy_j is None and r.decode_energy_j is None  # was: a number
    assert r.prefill_decode_note is not None and why in r.prefill_decode_note
    assert r.energy_j == pytest.approx(5000.0)  # the window's energy itself is untouched


# --- 3. which power reading the trace integrates -----------------------------------------


def averaged_step_trace(idle_w: float, load_w: float, seconds: float) -> list[Sample]:
    """What nvmlDeviceGetPowerUsage reads on Hopper every 0.1 s: the mean over the last second
    of a GPU at ``idle_w`` until t=0 and at ``load_w`` from t=0 to ``seconds``."""
    samples = []
    for i in range(-20, round(seconds * 10) + 1):
        t = i / 10
        loaded = min(max(t, 0.0), 1.0)  # the share of [t-1, t] under load
        samples.append(Sample(t, 0, idle_w + (load_w - idle_w) * loaded, 60.0))
    return samples


def test_one_second_averages_are_moved_back_half_a_second_before_integrating():
    # 100 W idle, 600 W over a 12 s window: 7200 J on the counter. Read as-is, the lagging average
    # loses half a second of (600 - 100) W: 350 J over [0, 1] + 6600 J = 6950 J (-3.5%, over the
    # 2% target). Moved back 0.5 s, only the ramp's corner is lost: 237.5 J over [0, 0.5],
    # 6600 J over [0.5, 11.5], 300 J held flat over the last half second = 7137.5 J (-0.9%).
    work = WindowWork(100, 100, 1, [(0.0, 1.0, 12.0)])
    samples = averaged_step_trace(100.0, 600.0, 12.0)
    common = {"start_mj": [0], "end_mj": [7_200_000], "window": (0.0, 12.0), "interval_s": 0.1, "work": work}
    as_read = energy_report(["H100"], samples, **common)  # type: ignore[arg-type]
    assert as_read.trace_energy_j == pytest.approx(6950.0)
    corrected = energy_report(["H100"], samples, readings=[PowerReading("average_1s")], **common)  # type: ignore[arg-type]
    assert corrected.trace_energy_j == pytest.approx(7137.5)
    (device,) = corrected.devices
    assert (device.power_reading, device.trace_shift_s) == ("average_1s", 0.5)
    assert corrected.energy_j == pytest.approx(7200.0)


def test_a_superchip_counter_covering_the_module_is_not_compared_with_a_gpu_only_trace():
    # GH200: the counter also holds the Grace CPU (8000 J), the GPU-only trace 5000 J: 37% apart,
    # which is not a disagreement. Where both are module-wide they are compared as ever.
    common = {"start_mj": [0], "end_mj": [8_000_000], "window": (0.0, 10.0), "interval_s": 0.1,
              "work": WindowWork(10, 10, 1, [(0.0, 1.0, 10.0)])}  # fmt: skip
    split = energy_report(["NVIDIA GH200 480GB"], flat_trace(500.0, 10.0),
                          readings=[PowerReading(counter_scope="module", trace_scope="gpu")], **common)  # type: ignore[arg-type]  # fmt: skip
    assert "counter_trace_disagree" not in {f.code for f in split.flags}
    assert (split.devices[0].counter_scope, split.devices[0].trace_scope) == ("module", "gpu")
    same = energy_report(["NVIDIA GH200 480GB"], flat_trace(500.0, 10.0),
                         readings=[PowerReading(counter_scope="module", trace_scope="module")], **common)  # type: ignore[arg-type]  # fmt: skip
    assert "counter_trace_disagree" in {f.code for f in same.flags}


class NVMLError(Exception):
    pass


def fake_nvml(*, instant: bool, arch: int, c2c: bool = False, module_field: bool = False) -> SimpleNamespace:
    """The slice of pynvml the backend asks at open and per read; ``calls`` records the order."""
    calls: list[str] = []

    def field_values(handle: object, fields: list[object]) -> list[SimpleNamespace]:
        calls.append("power")
        (field,) = fields
        ok = module_field if isinstance(field, tuple) else instant
        return [SimpleNamespace(nvmlReturn=0 if ok else 3, value=SimpleNamespace(uiVal=412_000))]

    def record(name: str, value: object):
        def call(*args: object) -> object:
            calls.append(name)
            return value

        return call

    def c2c_info(handle: object) -> SimpleNamespace:
        if not c2c:
            raise NVMLError("Not Supported")
        return SimpleNamespace(isC2cEnabled=1)

    return SimpleNamespace(
        calls=calls, NVMLError=NVMLError, NVML_TEMPERATURE_GPU=0, NVML_CLOCK_SM=1, NVML_FI_DEV_POWER_INSTANT=186,
        NVML_POWER_SCOPE_MODULE=1, NVML_DEVICE_ARCH_AMPERE=7,
        nvmlDeviceGetFieldValues=field_values, nvmlDeviceGetArchitecture=lambda h: arch,
        nvmlDeviceGetC2cModeInfoV=c2c_info, nvmlDeviceGetPowerUsage=record("power", 398_000),
        nvmlDeviceGetMemoryInfo=record("memory", SimpleNamespace(used=2**30, total=80 * 2**30)),
        nvmlDeviceGetTemperature=record("temperature", 61), nvmlDeviceGetUtilizationRates=record(
            "utilisation", SimpleNamespace(gpu=97)), nvmlDeviceGetClockInfo=record("clock", 1980),
        nvmlDeviceGetCurrentClocksEventReasons=record("reasons", 0),
    )  # fmt: skip


def backend(nvml: SimpleNamespace, name: str) -> NvmlBackend:
    b = NvmlBackend()
    b._nvml, b._handles, b._names = nvml, [object()], [name]
    b._readings = [b._reading_of(b._handles[0], name)]
    return b


@pytest.mark.parametrize(
    ("name", "instant", "arch", "kind"),
    [
        ("NVIDIA H100 80GB HBM3", True, 9, "instant"),  # the instantaneous field where the driver has it
        ("NVIDIA H100 80GB HBM3", False, 9, "average_1s"),  # Hopper's power usage is a 1 s average
        ("NVIDIA L4", False, 8, "average_1s"),  # Ada
        ("NVIDIA A100-SXM4-80GB", False, 7, "instant"),  # GA100 reads instantly
        ("Tesla V100-SXM2-32GB", False, 5, "instant"),
    ],
)
def test_each_device_says_which_power_reading_it_gives(name, instant, arch, kind):
    b = backend(fake_nvml(instant=instant, arch=arch), name)
    (reading,) = b.power_readings()
    assert reading.kind == kind and reading.counter_scope == "gpu"
    assert b.read_power(0) == pytest.approx(412.0 if instant else 398.0)


def test_a_superchip_is_detected_and_read_at_module_scope_where_the_driver_can():
    b = backend(fake_nvml(instant=True, arch=9, c2c=True, module_field=True), "NVIDIA GH200 480GB")
    assert b.power_readings() == [PowerReading("instant", counter_scope="module", trace_scope="module")]
    gpu_only = backend(fake_nvml(instant=True, arch=9, c2c=True, module_field=False), "NVIDIA GH200 480GB")
    assert gpu_only.power_readings() == [PowerReading("instant", counter_scope="module", trace_scope="gpu")]


# --- 5. each device's power is read first and stamped on its own ---------------------------


def test_power_is_read_before_the_other_fields():
    nvml = fake_nvml(instant=True, arch=9)
    b = backend(nvml, "NVIDIA H100 80GB HBM3")
    nvml.calls.clear()
    b.read(0)
    assert nvml.calls[0] == "power" and len(nvml.calls) == 6  # was: power last, after five slower fields


class SlowDevices:
    """Two devices on a fake clock: each NVML call takes 10 ms (behind the GIL, one at a time)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.full_reads = 0

    def clock(self) -> float:
        return self.now

    def device_names(self) -> list[str]:
        return ["H100", "H100"]

    def read_power(self, index: int) -> float:
        self.now += 0.01
        return 300.0

    def read(self, index: int) -> Sample:
        self.full_reads += 1
        power = self.read_power(index)
        self.now += 0.05  # five more fields
        return Sample(0.0, index, power, 60.0)


def test_each_device_is_stamped_at_its_own_power_read_and_slow_fields_come_once_a_second():
    devices = SlowDevices()
    sampler = Sampler(devices, interval_s=0.1, clock=devices.clock)  # type: ignore[arg-type]
    sampler.sample_once(full=True)
    first, second = sampler.samples
    # Device 1's power was read after device 0's full read (10 + 50 ms): was stamped with device 0's time.
    assert (first.time_s, second.time_s) == pytest.approx((0.0, 0.06))
    for _ in range(19):
        sampler.sample_once()
    assert devices.full_reads == 2 + 2  # sweeps 0 and 10 of 20 (the first forced), two devices each
    assert sum(s.temperature_c is not None for s in sampler.samples) == 4 and len(sampler.samples) == 40


# --- 4. the window opens and closes on a step of the counter -----------------------------


class SteppedCounter:
    """A 300 W device whose energy counter moves every 50 ms, on a clock that only sleep moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def device_names(self) -> list[str]:
        return ["H100"]

    def device_uuids(self) -> list[str]:
        return ["GPU-0"]

    def total_energy_mj(self, index: int) -> int:
        return int(math.floor(self.now / 0.05 + 1e-9) * 0.05 * 300.0 * 1000)

    def read(self, index: int) -> Sample:
        return Sample(0.0, index, 300.0, 60.0)

    def facts(self) -> list[object]:
        return []

    def close(self) -> None: ...


def test_counter_reads_are_taken_on_its_steps_and_the_step_is_reported():
    device = SteppedCounter(now=1.013)
    meter = EnergyMeter(lambda: device, interval_s=0.1, clock=device.clock).open()  # type: ignore[arg-type, return-value]
    meter.sleep = device.sleep
    meter.start()  # steps at 1.050 and 1.100: the window opens at 1.100
    device.now = 1.337  # the work ends between two steps
    r = meter.stop(WindowWork(10, 10, 1, [(0.0, 0.05, 0.2)]))  # closes on the step at 1.350
    # 0.25 s x 300 W = 75 J, the counter's delta exactly. Unaligned, 1.013-1.337 s read 1.0-1.3 s
    # of energy (90 J) over 0.324 s: 278 W instead of 300 W.
    assert r.energy_j == pytest.approx(75.0)
    assert r.mean_power_w == pytest.approx(300.0, rel=0.02)
    assert r.counter_step_s == pytest.approx(0.05, abs=0.002) and r.counter_aligned is True
    assert r.energy_uncertainty_j == pytest.approx(2 * 0.001 * r.mean_power_w + 0.002)


def test_a_counter_that_never_moves_is_read_unaligned_within_a_bounded_wait():
    device = SteppedCounter(now=5.0)
    device.total_energy_mj = lambda index: 1_000  # type: ignore[method-assign]
    meter = EnergyMeter(lambda: device, interval_s=0.1, clock=device.clock).open()  # type: ignore[arg-type, return-value]
    meter.sleep = device.sleep
    meter.start()
    assert device.now == pytest.approx(5.25, abs=0.002)  # one bounded wait of 0.25 s, not forever
    device.now += 10.0
    r = meter.stop(WindowWork(10, 10, 1, [(0.0, 0.05, 0.2)]))
    assert r.counter_aligned is False and r.counter_step_s is None


# --- 7. temperature_drift judges the window's end, not a warm-up ramp ----------------------


def temperatures(curve, seconds: int = 20) -> list[Sample]:
    """Whole-degree readings once a second, as NVML gives them."""
    return [Sample(float(t), 0, 600.0, float(round(curve(t)))) for t in range(seconds + 1)]


def test_a_real_warm_up_ramp_is_not_drift():
    # After the thermal floor's cooling: a fast rise of 20 C (tau 5 s) as the die takes load, then the
    # heat sink's slow climb of 25 C (tau 40 s). Over the second half it still rises 6.6 C (the old
    # rule, > 5 C, fired), but at the end it climbs 0.45 C/s: a normal ramp.
    def ramp(t: float) -> float:
        return 38 + 20 * (1 - math.exp(-t / 5)) + 25 * (1 - math.exp(-t / 40))

    slope = temperature_slope_c_per_s(temperatures(ramp))
    assert 0.3 < slope < TEMPERATURE_SLOPE_C_PER_S
    facts = WindowFacts(20.0, 0.1, None, None, True, 0.1, 0, slope)
    assert "temperature_drift" not in {f.code for f in validity_flags(facts)}


@pytest.mark.parametrize("rate", [1.5, -1.5])
def test_a_temperature_still_moving_fast_at_the_end_is_drift(rate):
    # Cooling that does not keep up (or a fan stepping up): 1.5 C/s to the very end.
    slope = temperature_slope_c_per_s(temperatures(lambda t: 50 + rate * t))
    assert slope == pytest.approx(rate, abs=0.1)
    facts = WindowFacts(20.0, 0.1, None, None, True, 0.1, 0, slope)
    (flag,) = [f for f in validity_flags(facts) if f.code == "temperature_drift"]
    assert f"{rate:+.2f} C/s" in flag.message.replace("+1.50", "+1.50")


# --- 9. Zeus is given NVML indices, whatever CUDA_VISIBLE_DEVICES holds --------------------


def test_zeus_gets_the_runs_gpus_as_integers_where_llem_hands_them_over_by_uuid(monkeypatch: pytest.MonkeyPatch):
    seen: dict[str, object] = {}

    class ZeusMonitor:
        """Zeus 0.16's parse of the variable (zeus/device/gpu/nvidia.py, NVIDIAGPUs._init_gpus)."""

        def __init__(self, gpu_indices: list[int]) -> None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            seen["visible"] = [int(idx) for idx in visible.split(",")] if visible is not None else None
            seen["gpu_indices"] = gpu_indices

    zeus = types.ModuleType("zeus")
    monitor = types.ModuleType("zeus.monitor")
    monitor.ZeusMonitor = ZeusMonitor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "zeus", zeus)
    monkeypatch.setitem(sys.modules, "zeus.monitor", monitor)
    uuids = "GPU-5c1e0000-0000-0000-0000-000000000002,GPU-8f2a0000-0000-0000-0000-000000000005"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", uuids)  # as the local runner sets it
    ZeusSampler([2, 5])  # was: ValueError (int('GPU-5c1e...')) at start
    assert seen == {"visible": [2, 5], "gpu_indices": [0, 1]}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == uuids  # the engine still sees what llem gave it


def test_the_meter_hands_zeus_the_nvml_indices_of_the_runs_gpus():
    class TwoOfEight(SteppedCounter):
        def nvml_indices(self) -> list[int]:
            return [3, 6]

        def device_names(self) -> list[str]:
            return ["H100", "H100"]

    given: list[list[int]] = []
    EnergyMeter(lambda: TwoOfEight(0.0), external_factory=given.append).open()  # type: ignore[arg-type, return-value, func-returns-value]
    assert given == [[3, 6]]


# --- 12. TensorRT-LLM's MPI keeps to loopback -------------------------------------------


def test_mpi_is_told_to_keep_to_loopback_before_tensorrt_llm_is_imported(monkeypatch: pytest.MonkeyPatch):
    class Stop(Exception):
        pass

    def sampling_params(**kwargs: object) -> object:
        raise Stop  # far enough: the environment was read when the module was imported

    fake = types.ModuleType("tensorrt_llm")
    fake.SamplingParams = sampling_params  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt_llm", fake)
    for key in MPI_LOOPBACK_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMPI_MCA_oob_tcp_if_include", "ib0")  # a site's own choice stays
    config = ExperimentConfig.model_validate({"model": "m", "engine": "tensorrt"})
    with pytest.raises(Stop):
        TensorRTEngine().load(config, "m")
    seen = {key: os.environ.get(key) for key in MPI_LOOPBACK_ENV}
    assert seen == {"OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "ib0"}
    dockerfile = (Path(__file__).parents[2] / "images" / "tensorrt" / "Dockerfile").read_text()
    assert "OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo" in dockerfile


# --- issue 23, 12-13: a default vLLM run on a busy host; the engine's root cause said ------


TINY_LLAMA = {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
              "hidden_size": 128, "max_position_embeddings": 2048, "dtype": "float32"}  # fmt: skip
LLAMA_8B = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
            "max_position_embeddings": 8192, "dtype": "bfloat16"}  # fmt: skip


def test_vllms_cpu_kv_cache_is_sized_from_the_study_when_it_is_silent():
    small = ExperimentConfig.model_validate(
        {"model": "m", "engine": "vllm", "max_input_tokens": 32, "max_output_tokens": 12,
         "vllm": {"engine": {"max_num_seqs": 4, "max_model_len": 256}}}
    )  # fmt: skip
    # 2 x 2 layers x 1 KV head x 64 x 4 bytes = 1 KiB a token; max(4 x 44, 256) tokens x 1.25 = 320 KiB:
    # the 64 MiB floor.
    assert vllm_cpu_kv_cache_bytes(small, TINY_LLAMA) == 64 << 20
    default = ExperimentConfig.model_validate({"model": "m", "engine": "vllm", "dtype": "bfloat16"})
    # 2 x 32 x 8 x 128 x 2 bytes = 128 KiB a token; 256 requests x (256 + 256) tokens x 1.25 = 20 GiB.
    assert vllm_cpu_kv_cache_bytes(default, LLAMA_8B) == 256 * 512 * 131072 * 5 // 4
    told = ExperimentConfig.model_validate(
        {"model": "m", "engine": "vllm", "vllm": {"engine": {"gpu_memory_utilization": 0.3}}}
    )
    assert vllm_cpu_kv_cache_bytes(told, LLAMA_8B) is None  # the study said how much: untouched
    assert vllm_cpu_kv_cache_bytes(default, {"model_type": "mystery"}) is None  # unknown shape: vLLM's default


def test_an_engine_error_that_points_at_its_root_cause_carries_it(tmp_path: Path):
    run_dir = tmp_path / "e001-c1"
    run_dir.mkdir()
    said = "Engine core initialization failed. See root cause above. Failed core proc(s): {}"
    (run_dir / "container.log").write_text(
        "(EngineCore pid=24) ERROR 12-01 19:55:09 [core.py:1510] Traceback (most recent call last):\n"
        "(EngineCore pid=24) ERROR 12-01 19:55:09 [core.py:1510] ValueError: Available memory on node 0 "
        "(19.31/21.19 GiB) on startup is less than desired CPU memory utilization (0.92, 19.49 GiB).\n"
        "(EngineCore pid=24) INFO 12-01 19:55:09 [core.py:1520] shutting down\n"
        f"RuntimeError: {said}\n[llem-agent 19:55:10] failed in phase load: RuntimeError: {said}\n"
    )
    error = RunError(run_id="e001-c1", type="RuntimeError", message=said, phase="load", traceback="")
    (run_dir / "error.json").write_text(error.model_dump_json())
    _, failure = collect(run_dir, "e001-c1", ContainerOutcome(1, False, False, 3.0))
    assert failure is not None
    assert failure.message == (
        f"load: {said} (root cause: ValueError: Available memory on node 0 (19.31/21.19 GiB) on startup is less "
        "than desired CPU memory utilization (0.92, 19.49 GiB).)"
    )
    assert "\n" not in failure.message


# --- issue 22, 1.1: passthrough_kwargs reach the engine call they belong to --------------


TARGETS = {
    "generate": frozenset({"typical_p", "suppress_tokens"}),
    "BitsAndBytesConfig": frozenset({"llm_int8_threshold"}),
}


def test_each_passthrough_key_goes_to_the_one_call_that_takes_it():
    routes = route_passthrough(
        {"typical_p": 0.2, "offload_folder": "/x", "llm_int8_threshold": 5.0}, lambda: TARGETS, "from_pretrained"
    )
    assert routes == {"generate": {"typical_p": 0.2}, "from_pretrained": {"offload_folder": "/x"},
                      "BitsAndBytesConfig": {"llm_int8_threshold": 5.0}}  # fmt: skip
    assert route_passthrough(None, lambda: pytest.fail("no engine class is asked for nothing"), None) == {}


def test_a_passthrough_key_no_call_or_two_calls_take_is_refused():
    both = {"SamplingParams": frozenset({"seed", "n"}), "LLM": frozenset({"seed", "enforce_eager"})}
    with pytest.raises(
        PassthroughError, match=r"passthrough_kwargs.seed: taken by more than one call \(SamplingParams, LLM\)"
    ):
        route_passthrough({"seed": 3}, lambda: both, None)
    with pytest.raises(PassthroughError, match=r"passthrough_kwargs\.bogus: no call of this engine takes it"):
        route_passthrough({"bogus": 1}, lambda: both, None)


def test_a_passthrough_key_may_not_set_what_llem_sets_itself():
    config = ExperimentConfig.model_validate({"model": "m", "engine": "vllm", "passthrough_kwargs": {"max_tokens": 3}})
    with pytest.raises(PassthroughError, match="llem sets it for SamplingParams"):
        check_passthrough(
            config, {"SamplingParams": {"max_tokens": 3}}, {"SamplingParams": vllm_sampling_kwargs(config)}
        )
    nested = ExperimentConfig.model_validate(
        {"model": "m", "engine": "vllm", "passthrough_kwargs": {"enable_prefix_caching": False}}
    )
    with pytest.raises(PassthroughError, match="a field of vllm:, set it there"):  # vllm.engine.enable_prefix_caching
        check_passthrough(nested, {"LLM": {"enable_prefix_caching": False}}, {"LLM": {}})


# --- issue 22, 1.2: the dry run's OOM verdict -----------------------------------------------


def test_an_estimate_beyond_the_gpus_memory_is_a_likely_oom():
    h100 = [Gpu(0, "GPU-a", "NVIDIA H100 80GB HBM3", memory_gb=80.0), Gpu(1, "GPU-b", "NVIDIA H100", memory_gb=80.0)]
    estimate = VramEstimate(weights_gb=70.0, kv_cache_gb=10.0, overhead_gb=10.5, total_gb=90.5, params_from="x")
    # 90.5 GB against 95% of one 80 GB GPU (76 GB): likely OOM; across two (152 GB): fits.
    assert likely_oom(estimate, 1, h100) is True
    assert likely_oom(estimate, 2, h100) is False
    assert likely_oom(estimate, 1, []) is None  # no GPU here: no verdict, never "fits"
    assert likely_oom(None, 1, h100) is None
    assert _verdict({0: True, 1: False, 2: None}, h100) == (
        "memory: 1 will run, 1 likely OOM (estimate > 95% of 80 GB per GPU), 1 not estimated (model files not local)"
    )
