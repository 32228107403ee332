"""The one place the vendors' errors become llem's (llem_agent.energy.errors), each by hand."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from llem_agent.energy import (
    BaselineFailed,
    DeviceLost,
    EnergyUnavailable,
    NvmlBackend,
    NvmlUnavailable,
    RaplUnavailable,
    SamplerUnavailable,
)
from llem_agent.energy.errors import (
    gpu_lost_errors,
    import_vendor,
    nvml_errors,
    nvml_optional,
    rapl_errors,
    rapl_missing,
)
from llem_agent.energy.rapl import RaplMeter


class NVMLError(Exception):
    """pynvml's base error, as the fakes raise it."""


NVML = SimpleNamespace(NVMLError=NVMLError)


def test_the_class_names_are_what_error_json_and_the_host_read():
    # error.json's "type" is the class name; a renamed class would change what a study writes.
    names = [c.__name__ for c in (NvmlUnavailable, RaplUnavailable, SamplerUnavailable, BaselineFailed)]
    assert names == ["NvmlUnavailable", "RaplUnavailable", "SamplerUnavailable", "BaselineFailed"]
    assert all(issubclass(c, EnergyUnavailable) for c in (NvmlUnavailable, RaplUnavailable, SamplerUnavailable))
    assert issubclass(EnergyUnavailable, RuntimeError) and issubclass(BaselineFailed, RuntimeError)
    assert not issubclass(BaselineFailed, EnergyUnavailable)  # a baseline failure fails the run


def test_an_nvml_error_becomes_nvml_unavailable_with_the_drivers_words():
    vendor = NVMLError("Driver Not Loaded")
    with pytest.raises(NvmlUnavailable) as caught, nvml_errors(NVML, "NVML unavailable"):
        raise vendor
    assert str(caught.value) == "NVML unavailable: Driver Not Loaded"
    assert caught.value.__cause__ is vendor


def test_other_errors_pass_through_nvml_errors_unchanged():
    with pytest.raises(KeyError), nvml_errors(NVML, "NVML unavailable"):
        raise KeyError("not NVML's")


def test_a_field_nvml_refuses_is_none_and_only_the_named_errors_are_swallowed():
    def refused() -> int:
        raise NVMLError("Not Supported")

    def garbled() -> int:
        raise TypeError("not a device handle")

    assert nvml_optional(NVML, lambda: 61) == 61
    assert nvml_optional(NVML, refused) is None
    assert nvml_optional(NVML, garbled, TypeError) is None
    with pytest.raises(TypeError):
        nvml_optional(NVML, garbled)


def test_a_missing_vendor_package_raises_llems_error_without_the_import_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "zeus", None)  # what an image without the extra gives
    missing = SamplerUnavailable("energy_sampler: zeus needs the zeus extra (pip install 'llem-agent[zeus]')")
    with pytest.raises(SamplerUnavailable) as caught:
        import_vendor("zeus", missing)
    assert caught.value is missing
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert import_vendor("json", missing) is sys.modules["json"]


def test_rapl_errors_and_a_missing_tree():
    denied = r"^RAPL unreadable: \[Errno 13\] Permission denied: 'energy_uj'$"
    with pytest.raises(RaplUnavailable, match=denied), rapl_errors():
        raise PermissionError(13, "Permission denied", "energy_uj")
    garbled = r"^RAPL unreadable: invalid literal for int\(\) with base 10: 'x'$"
    with pytest.raises(RaplUnavailable, match=garbled), rapl_errors():
        int("x")
    assert str(rapl_missing(Path("/nowhere"))) == "no RAPL counters under /nowhere"


def test_the_rapl_meter_reports_an_unreadable_counter_as_its_reason(tmp_path: Path):
    zone = tmp_path / "intel-rapl:0"
    (zone / "energy_uj").mkdir(parents=True)  # a directory where the counter should be: unreadable
    meter = RaplMeter(tmp_path)
    meter.start()
    assert meter.stop() is None
    assert meter.reason == f"RAPL unreadable: [Errno 21] Is a directory: '{zone / 'energy_uj'}'"


def test_nvml_backend_open_and_counter_errors_are_mapped(monkeypatch: pytest.MonkeyPatch):
    def no_driver() -> None:
        raise NVMLError("Driver Not Loaded")

    monkeypatch.setitem(sys.modules, "pynvml", SimpleNamespace(NVMLError=NVMLError, nvmlInit=no_driver))
    with pytest.raises(NvmlUnavailable, match=r"^NVML unavailable: Driver Not Loaded$"):
        NvmlBackend().open()
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(NvmlUnavailable, match=r"^nvidia-ml-py is not installed$"):
        NvmlBackend().open()

    def no_counter(handle: object) -> int:
        raise NVMLError("Not Supported")

    backend = NvmlBackend()
    backend._nvml = SimpleNamespace(NVMLError=NVMLError, nvmlDeviceGetTotalEnergyConsumption=no_counter)
    backend._handles, backend._names = [object()], ["Tesla T4"]
    with pytest.raises(NvmlUnavailable, match=r"^GPU 0 \(Tesla T4\) has no total-energy counter: Not Supported$"):
        backend.total_energy_mj(0)


class CodedError(NVMLError):
    """pynvml's error as the driver raises it: ``value`` is the nvmlReturn_t code."""

    def __init__(self, value: int, words: str) -> None:
        super().__init__(words)
        self.value = value


def test_a_lost_gpu_is_device_lost_and_any_other_read_error_stays_the_drivers():
    # NVML_ERROR_GPU_IS_LOST is 15 in nvml.h; a timeout (10) is a reading that failed once.
    lost, timeout = CodedError(15, "GPU is lost"), CodedError(10, "Timeout")
    with (
        pytest.raises(DeviceLost, match=r"^GPU 1 \(H100\) is lost: GPU is lost$"),
        gpu_lost_errors(NVML, "GPU 1 (H100)"),
    ):
        raise lost
    with pytest.raises(CodedError) as caught, gpu_lost_errors(NVML, "GPU 1 (H100)"):
        raise timeout
    assert caught.value is timeout
    assert issubclass(DeviceLost, NvmlUnavailable) and DeviceLost.__name__ == "DeviceLost"

    def gone(handle: object) -> int:
        raise CodedError(15, "GPU is lost")

    backend = NvmlBackend()
    backend._nvml = SimpleNamespace(
        NVMLError=NVMLError, nvmlDeviceGetTotalEnergyConsumption=gone, nvmlDeviceGetPowerUsage=gone
    )
    backend._handles, backend._names = [object()], ["Tesla T4"]
    with pytest.raises(DeviceLost, match=r"^GPU 0 \(Tesla T4\) is lost: GPU is lost$"):
        backend.total_energy_mj(0)
    with pytest.raises(DeviceLost, match=r"^GPU 0 \(Tesla T4\) is lost: GPU is lost$"):
        backend.read_power(0)
