"""llem's energy exceptions, and the one place where the vendors' errors become them.

pynvml's ``NVMLError``, RAPL's missing or unreadable files and a Zeus or CodeCarbon package that
is not installed are translated here and nowhere else; every other energy module raises and
catches llem's own exceptions only. Each exception's message is what the run reports: a source
that cannot measure gives its reason (``energy_j`` None, ``unavailable_reason`` or
``cpu_energy_note`` saying why), and a sampler the config asks for but the image lacks fails the
run before the model loads, its class name the ``type`` of ``error.json``.

A field a device does not report (utilisation on MIG, clocks on some boards) is not an error:
:func:`nvml_optional` reads it as None. Zeus's and CodeCarbon's own errors while measuring pass
through as they are (the run fails with their type and message, as it always has).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class EnergyUnavailable(RuntimeError):
    """An energy source cannot measure here; the message says why."""


class NvmlUnavailable(EnergyUnavailable):
    """NVML cannot be used here (no driver, no device, or no energy counter)."""


class DeviceLost(NvmlUnavailable):
    """A GPU of the run is gone (NVML: GPU is lost, it fell off the bus): unlike a reading that
    fails for a while (a gap in the trace), it will not come back, so the run fails."""


class RaplUnavailable(EnergyUnavailable):
    """The CPU packages' RAPL counters are absent or unreadable."""


class SamplerUnavailable(EnergyUnavailable):
    """The chosen sampler's package is not in this image."""


class BaselineFailed(RuntimeError):
    """The idle baseline got no power reading from a device: no baseline rather than 0 W."""


def import_vendor(name: str, missing: EnergyUnavailable) -> Any:
    """The vendor's module ``name`` (pynvml, zeus, codecarbon); ``missing`` is raised where it is
    not installed (its message names what to install)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise missing from None


# nvmlReturn_t NVML_ERROR_GPU_IS_LOST: the GPU fell off the bus or is otherwise inaccessible.
NVML_ERROR_GPU_IS_LOST = 15


def _gpu_lost(nvml: Any, exc: Exception) -> bool:
    code = getattr(nvml, "NVML_ERROR_GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST)
    return getattr(exc, "value", None) == code


@contextlib.contextmanager
def nvml_errors(nvml: Any, what: str) -> Iterator[None]:
    """An ``NVMLError`` inside becomes ``NvmlUnavailable("<what>: <the driver's words>")``."""
    try:
        yield
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(f"{what}: {exc}") from exc


@contextlib.contextmanager
def gpu_lost_errors(nvml: Any, what: str) -> Iterator[None]:
    """A lost GPU inside becomes ``DeviceLost("<what> is lost: ...")``; every other error passes
    as it is (a reading that failed once: a gap in the trace, not a failure of the run)."""
    try:
        yield
    except nvml.NVMLError as exc:
        if _gpu_lost(nvml, exc):
            raise DeviceLost(f"{what} is lost: {exc}") from exc
        raise


def nvml_optional(nvml: Any, call: Callable[[], T], *also: type[Exception]) -> T | None:
    """What ``call`` reads, or None where NVML refuses it (``NVMLError``, or one of ``also``):
    a field this device does not report, which is no failure of the run."""
    try:
        return call()
    except (nvml.NVMLError, *also):
        return None


@contextlib.contextmanager
def rapl_errors() -> Iterator[None]:
    """An unreadable RAPL file inside (permission denied: ``energy_uj`` is root-only on new
    kernels; a value that is not a number) becomes ``RaplUnavailable``."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise RaplUnavailable(f"RAPL unreadable: {exc}") from exc


def rapl_missing(root: Path) -> RaplUnavailable:
    """No RAPL package counter under ``root`` (not Linux, no Intel/AMD package, not mounted)."""
    return RaplUnavailable(f"no RAPL counters under {root}")
