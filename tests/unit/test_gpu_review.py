"""The GPU-path review: each finding at its seam (NVML, the engines' argument functions, the
container spec, the host's preflight), as a test that failed before the fix."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from llem.devices import Gpu, refuse_mig
from llem.doctor import nvidia_support
from llem.errors import ConfigError, EnvironmentProblem
from llem.models import check_hf_cache_writable
from llem_agent.contract import BaselineConfig, ExperimentConfig
from llem_agent.energy import BaselineFailed, EnergyMeter, NvmlBackend, WindowWork, energy_report
from llem_agent.engines.args import TENSORRT_BUILD_ONLY, tensorrt_llm_kwargs
from llem_agent.engines.tensorrt import build_key
from llem_agent.measure import GpuNotVisible, check_visible_gpus
from llem_agent.metrics import BatchObservation, latency, request_records
from llem_agent.telemetry import Sample

# --- 4. one unsupported NVML field must not drop the sample ------------------------------


class NVMLError(Exception):
    pass


def fake_pynvml(unsupported: set[str]) -> SimpleNamespace:
    """The slice of pynvml NvmlBackend.read uses; names in ``unsupported`` raise NVMLError."""

    def call(name: str, value: object):
        def f(*args: object) -> object:
            if name in unsupported:
                raise NVMLError(f"{name}: Not Supported")
            return value

        return f

    return SimpleNamespace(
        NVMLError=NVMLError,
        NVML_TEMPERATURE_GPU=0,
        NVML_CLOCK_SM=1,
        nvmlDeviceGetPowerUsage=call("power", 312_500),
        nvmlDeviceGetMemoryInfo=call("memory", SimpleNamespace(used=2**30, total=80 * 2**30)),
        nvmlDeviceGetTemperature=call("temperature", 61),
        nvmlDeviceGetUtilizationRates=call("utilisation", SimpleNamespace(gpu=97)),
        nvmlDeviceGetClockInfo=call("clock", 1980),
        nvmlDeviceGetCurrentClocksEventReasons=call("reasons", 0x4),
    )


def backend_with(nvml: SimpleNamespace) -> NvmlBackend:
    backend = NvmlBackend()
    backend._nvml, backend._handles, backend._names = nvml, [object()], ["H100"]
    return backend


def test_an_unsupported_field_is_none_and_the_sample_keeps_its_power():
    sample = backend_with(fake_pynvml({"utilisation", "clock"})).read(0)  # as on a MIG slice
    assert sample.power_w == pytest.approx(312.5)
    assert sample.sm_utilisation_pct is None and sample.sm_clock_mhz is None
    assert sample.temperature_c == 61.0 and sample.throttle_reasons == 0x4


def test_power_is_required():
    with pytest.raises(NVMLError):
        backend_with(fake_pynvml({"power"})).read(0)


class Silent:
    """A device that never answers a power read."""

    def device_names(self) -> list[str]:
        return ["H100"]

    def device_uuids(self) -> list[str]:
        return ["GPU-0"]

    def read(self, index: int) -> Sample:
        raise RuntimeError("NVML: GPU is lost")

    def close(self) -> None: ...


def test_a_baseline_without_samples_fails_loudly_instead_of_zero_watts(tmp_path: Path):
    meter = EnergyMeter(Silent, interval_s=0.01).open()  # type: ignore[arg-type, return-value]
    meter.sleep = lambda s: None
    with pytest.raises(BaselineFailed, match="no power reading from GPU 0"):
        meter.measure_baseline(BaselineConfig(strategy="fresh", duration_seconds=5), tmp_path)


# --- 6. idle power after load, recorded beside the one before ---------------------------


class Idle:
    """Reads ``watts[0]`` until the model is 'loaded', then ``watts[1]``; a counter to match."""

    def __init__(self) -> None:
        self.watts = 60.0
        self.start = time.monotonic()

    def device_names(self) -> list[str]:
        return ["H100"]

    def device_uuids(self) -> list[str]:
        return ["GPU-0"]

    def total_energy_mj(self, index: int) -> int:
        return int((time.monotonic() - self.start) * 1000 * self.watts)

    def read(self, index: int) -> Sample:
        return Sample(0.0, index, self.watts, 40.0, 1.0, 2.0, 0.0, 300.0, 0x1)

    def facts(self) -> list[object]:
        return []

    def close(self) -> None: ...


def test_loaded_idle_power_is_measured_in_the_thermal_floor_and_used_for_the_adjusted_energy(tmp_path: Path):
    device = Idle()
    meter = EnergyMeter(lambda: device, interval_s=0.01).open()  # type: ignore[arg-type, return-value]
    meter.sleep = lambda s: None
    meter.measure_baseline(BaselineConfig(strategy="fresh", duration_seconds=5), tmp_path)
    device.watts = 110.0  # the CUDA context and the weights are resident now
    meter.loaded_idle(0.2, time.sleep)
    meter.start()
    time.sleep(0.1)
    report = meter.stop(WindowWork(1, 1, 1, [(0.0, 0.01, 0.1)]))
    baseline = report.baseline
    assert baseline is not None
    assert baseline.power_w == pytest.approx([60.0])
    assert baseline.loaded_power_w == pytest.approx([110.0])
    assert baseline.adjusted_with == "post_load"
    assert report.adjusted_energy_j == pytest.approx(0.0, abs=3.0)  # the window ran at loaded-idle power


def test_without_a_thermal_floor_the_adjusted_energy_says_it_used_the_pre_load_idle(tmp_path: Path):
    meter = EnergyMeter(Idle, interval_s=0.01).open()  # type: ignore[arg-type, return-value]
    meter.sleep = lambda s: None
    meter.measure_baseline(BaselineConfig(strategy="fresh", duration_seconds=5), tmp_path)
    slept: list[float] = []
    meter.loaded_idle(0.0, slept.append)
    meter.start()
    report = meter.stop(WindowWork(1, 1, 1, [(0.0, 0.01, 0.1)]))
    assert report.baseline is not None and report.baseline.adjusted_with == "pre_load"
    assert report.baseline.loaded_power_w is None


# --- 13. flags that mean what a reader thinks --------------------------------------------


def window(reasons: int, temps: list[float]) -> list[Sample]:
    return [Sample(i * 0.1, 0, 690.0, t, 1.0, 2.0, 99.0, 1755.0, reasons) for i, t in enumerate(temps)]


def flags_of(samples: list[Sample]) -> tuple[set[str], float | None]:
    end = samples[-1].time_s
    r = energy_report(
        ["H100"], samples, start_mj=[0], end_mj=[int(690.0 * end * 1000)], window=(0.0, end), interval_s=0.1,
        work=WindowWork(1, 1, 1, [(0.0, 0.1, end)]),
    )  # fmt: skip
    return {f.code for f in r.flags}, r.power_capped_fraction


def test_the_software_power_cap_at_full_load_is_not_throttling():
    codes, capped = flags_of(window(0x4, [70.0] * 101))
    assert "throttled" not in codes
    assert capped == pytest.approx(1.0)
    assert "throttled" in flags_of(window(0x20 | 0x4, [70.0] * 101))[0]  # software thermal slowdown is


def test_warming_up_from_the_thermal_floor_is_not_temperature_drift():
    ramp_then_plateau = [40.0 + min(i, 40) * 0.6 for i in range(101)]  # +24 C in 4 s, then flat
    assert "temperature_drift" not in flags_of(window(0, ramp_then_plateau))[0]
    still_rising = [40.0 + i * 0.25 for i in range(101)]
    assert "temperature_drift" in flags_of(window(0, still_rising))[0]


# --- 7. no request metrics: TTFT missing with a reason, never the batch time -------------


def test_requests_without_engine_metrics_have_no_ttft_and_say_why():
    batch = BatchObservation(
        input_tokens=[5, 5], output_tokens=[8, 8], token_times_s=[[0.1, 0.9], []], complete=False, untimed_end_s=1.2
    )
    records = request_records([batch])
    assert records[0].ttft_s == pytest.approx(0.1)
    assert records[1].ttft_s is None and records[1].e2e_latency_s == pytest.approx(1.2)
    lat = latency(records)
    assert lat.ttft_s.n == 1
    assert lat.ttft_missing_reason is not None and "1 of 2" in lat.ttft_missing_reason
    assert (
        latency(request_records([BatchObservation([5], [8], [[0.1, 0.9]], complete=False)])).ttft_missing_reason is None
    )


# --- 2, 3, 5. TensorRT-LLM ----------------------------------------------------------------


def trt(**section: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"model": "m", "engine": "tensorrt", "tensorrt": section})


def test_pytorch_flow_never_gets_build_only_keys_and_asks_for_perf_metrics():
    kwargs = tensorrt_llm_kwargs(trt(max_batch_size=8), "/m", engine_cache_dir="/cache")
    assert not TENSORRT_BUILD_ONLY & set(kwargs)
    assert kwargs["return_perf_metrics"] is True


def test_a_compiled_build_gets_its_workspace_on_the_engine_cache_volume():
    kwargs = tensorrt_llm_kwargs(trt(engine="tensorrt", fast_build=True), "/m", engine_cache_dir="/llem/engine-cache")
    assert kwargs["workspace"] == "/llem/engine-cache/workspace"  # not the 4 GiB /tmp tmpfs
    assert kwargs["fast_build"] is True and kwargs["backend"] == "tensorrt"


def test_a_prebuilt_engine_loads_from_its_read_only_mount():
    kwargs = tensorrt_llm_kwargs(trt(engine_path="/host/engines/x"), "/m", prebuilt_engine_dir="/llem/trt-engine")
    assert kwargs["model"] == "/llem/trt-engine" and kwargs["backend"] == "tensorrt"
    assert "workspace" not in kwargs


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"fast_build": True}, "compiled engine only"),
        ({"engine": "pytorch", "quant": {"quant_algo": "FP8"}}, "pre-quantised model"),
        ({"engine": "tensorrt", "kv_cache": {"dtype": "fp8"}}, "kv_cache_quant_algo"),
        ({"engine": "pytorch", "engine_path": "/e"}, "needs engine: tensorrt"),
        ({"engine_path": "/e", "fast_build": True}, "prebuilt engine"),
    ],
)
def test_impossible_tensorrt_combinations_are_refused_at_parse_time(section, message):
    with pytest.raises(ValidationError, match=message):
        trt(**section)


def test_the_engine_cache_key_names_the_gpu_and_the_toolchain():
    kwargs = tensorrt_llm_kwargs(trt(engine="tensorrt"), "/m")
    h100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.13", "tensorrt_llm": "1.2.1"}
    keys = {
        build_key(kwargs, "/m", h100),
        build_key(kwargs, "/m", h100 | {"gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}),
        build_key(kwargs, "/m", h100 | {"tensorrt": "10.14"}),
        build_key(kwargs, "/m", h100 | {"tensorrt_llm": "1.3.0"}),
    }
    assert len(keys) == 4
    assert build_key(kwargs, "/m", dict(h100)) == build_key(kwargs, "/m", h100)


# --- 8. Zeus must not synchronise (and so create CUDA contexts) inside the window -------


def test_zeus_windows_do_not_synchronise(monkeypatch: pytest.MonkeyPatch):
    import sys

    calls: list[tuple[str, dict[str, object]]] = []

    class Monitor:
        def __init__(self, gpu_indices: list[int]) -> None: ...

        def begin_window(self, key: str, **kwargs: object) -> None:
            calls.append(("begin", kwargs))

        def end_window(self, key: str, **kwargs: object) -> object:
            calls.append(("end", kwargs))
            return SimpleNamespace(gpu_energy={0: 10.0})

    monkeypatch.setitem(sys.modules, "zeus", SimpleNamespace(__version__="0.11"))
    monkeypatch.setitem(sys.modules, "zeus.monitor", SimpleNamespace(ZeusMonitor=Monitor))
    from llem_agent.energy.external import ZeusSampler

    sampler = ZeusSampler([0])
    sampler.start()
    sampler.stop()
    assert calls == [("begin", {"sync_execution": False}), ("end", {"sync_execution": False})]


# --- 9. the agent sees exactly its GPUs; MIG refused; doctor's NVIDIA check ---------------


def test_the_agent_refuses_missing_gpus_and_in_a_container_extra_ones():
    check_visible_gpus(["GPU-a"], ["GPU-a"], "docker")
    check_visible_gpus(["GPU-a"], ["GPU-a", "GPU-b"], "local")  # NVML on a host sees every GPU
    check_visible_gpus(None, ["GPU-a", "GPU-b"], "docker")  # a standalone (compose) run
    with pytest.raises(GpuNotVisible, match="does not see"):
        check_visible_gpus(["GPU-a"], ["GPU-b"], "local")
    with pytest.raises(GpuNotVisible, match="a CPU run sees GPUs"):
        check_visible_gpus([], ["GPU-a"], "docker")


def test_mig_mode_gpus_are_refused_with_one_line():
    refuse_mig([Gpu(0, "GPU-a", "H100")])
    with pytest.raises(EnvironmentProblem, match=r"GPU 1 \(A100\) is in MIG mode") as caught:
        refuse_mig([Gpu(0, "GPU-a", "H100"), Gpu(1, "GPU-b", "A100", mig=True)])
    assert "\n" not in str(caught.value)


def test_cdi_spec_dirs_alone_are_not_nvidia_support(tmp_path: Path):
    empty = {"Runtimes": {"runc": {}}, "CDISpecDirs": [str(tmp_path)]}
    assert nvidia_support(empty) is None  # every Docker 25+ reports its default CDI directories
    (tmp_path / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: []\n")
    assert "nvidia.yaml" in (nvidia_support(empty) or "")
    assert nvidia_support({"Runtimes": {"nvidia": {}, "runc": {}}}) is not None


# --- 12. a root-owned 0755 Hugging Face cache shuts the unprivileged agent out ----------


def test_preflight_refuses_a_hugging_face_cache_the_agent_cannot_write(tmp_path: Path):
    cache = tmp_path / "hf"
    (cache / "hub").mkdir(parents=True)
    os.chmod(cache, 0o755)
    os.chmod(cache / "hub", 0o755)
    if os.getuid() == 0:
        with pytest.raises(ConfigError, match=r"not writable by llem's agent .* chmod -R g\+rwX"):
            check_hf_cache_writable(cache, 0, "org/model")
        os.chmod(cache, 0o775)
        os.chmod(cache / "hub", 0o775)  # group root (the agent's group) may write now
    check_hf_cache_writable(cache, os.getuid(), "org/model")
    check_hf_cache_writable(tmp_path / "absent", os.getuid(), "org/model")  # llem creates it writable


# --- 10. NVIDIA's entrypoint (CUDA forward compatibility) runs before the agent ----------


def test_the_tensorrt_image_chains_through_nvidias_entrypoint():
    import json as _json

    from tests.conftest import REPO

    lines = (REPO / "images" / "tensorrt" / "Dockerfile").read_text().splitlines()
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT")]
    assert _json.loads(entrypoint.removeprefix("ENTRYPOINT").strip()) == [
        "/opt/nvidia/nvidia_entrypoint.sh",
        "llem-agent",
    ]
