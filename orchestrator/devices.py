"""Host GPU discovery through NVML (nvidia-ml-py), the host's one NVML seam; no GPU means the CPU path.

Which GPUs a study may use is decided here, in two steps: what this process was given
(``CUDA_VISIBLE_DEVICES``, read as CUDA reads it: ``given_gpus``), then what ``--gpus`` picks
from those (``allowed_gpus``). llem names a GPU by its NVML index, as nvidia-smi does (``--gpus``,
lock files, the Docker device request), and hands it to a run by UUID. NVML's errors become
one-line messages in one place (``nvml_line``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from llem_agent.contract import ExperimentConfig
from llem_agent.contract.simulation import SimulatedGpus

from .errors import ConfigError, EnvironmentProblem
from .simulation import simulated_gpus

T = TypeVar("T")
MIB = 2**20

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
ORDER_ENV = "CUDA_DEVICE_ORDER"
# Slurm's value for a job given no GPU; CUDA, finding no such device, then sees none.
SLURM_NO_GPU = "NoDevFiles"
# NVML errors that mean there is no NVIDIA GPU here at all: the CPU path, as without a driver.
_ABSENT = ("NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_DRIVER_NOT_LOADED")
# What to check, by NVML error; any other error is said in NVML's own words.
_ADVICE = {
    "NVML_ERROR_NO_PERMISSION": (
        "check that this user can open /dev/nvidiactl and /dev/nvidia* (in a container: the NVIDIA "
        "runtime and its --gpus; under Slurm: the GPUs the job was given), or set CUDA_VISIBLE_DEVICES= "
        "for the CPU path"
    ),
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": (
        "the NVIDIA library and kernel module differ in version (a driver updated without a reboot): "
        "reboot, or reload the nvidia kernel modules"
    ),
    "NVML_ERROR_GPU_IS_LOST": "the GPU fell off the bus: see dmesg and nvidia-smi; it needs a reset or a reboot",
    "NVML_ERROR_INSUFFICIENT_POWER": "check the GPU's power cables",
}
# The library nvidia-ml-py opens on Linux, and its words when there is none (NVML_ERROR_LIBRARY_NOT_FOUND).
NVML_LIBRARY = "libnvidia-ml.so.1"
NO_NVML_LIBRARY = "NVML Shared Library Not Found"


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML's (nvidia-smi's) index
    uuid: str
    name: str
    mig: bool = False  # MIG mode on: its slices share one energy counter, llem measures whole GPUs
    pci_bus_id: str = ""  # the order of CUDA_DEVICE_ORDER=PCI_BUS_ID
    memory_gb: float | None = None  # total device memory (what the dry run holds estimates against)
    simulated: bool = False  # --simulate-gpus: a simulated GPU (GPU-SIM-... UUID), never a real one


@dataclass(frozen=True)
class NvmlView:
    """What NVML answered: the GPUs it opened, those it could not (NVML index -> why: a cgroup
    or a container denies them), and why there is no NVML at all (no library, no driver)."""

    gpus: tuple[Gpu, ...] = ()
    unreadable: dict[int, str] = field(default_factory=dict)
    absent: str | None = None


def nvml_line(nvml: Any, exc: Exception, doing: str) -> str:
    """The one mapping of an NVML error to what the user reads: what failed, NVML's words, what to check."""
    advice = next((text for name, text in _ADVICE.items() if _is(nvml, exc, name)), None)
    return f"NVML {doing}: {exc}" + (f"; {advice}" if advice else "")


def _is(nvml: Any, exc: Exception, name: str) -> bool:
    code = getattr(nvml, name, None)
    return code is not None and getattr(exc, "value", None) == code


def read_nvml() -> NvmlView:
    """What NVML sees on this host. No NVML library or driver: no GPU, said why (the CPU path).
    A GPU NVML cannot open is listed as unreadable; any other NVML error is an EnvironmentProblem.
    With ``LLEM_SIMULATE_GPUS`` (``--simulate-gpus``): the simulated GPUs instead, and no real one."""
    simulation = simulated_gpus()
    if simulation is not None:
        return _simulated_view(simulation)
    if "pynvml" not in sys.modules and _no_nvml_library():
        # A host without NVIDIA's driver (the CPU path): said without importing nvidia-ml-py
        # first, a module of ctypes bindings that takes longer to import (~0.03 s) than all of
        # this, only to fail the same way in nvmlInit.
        if importlib.util.find_spec("pynvml") is None:
            return NvmlView(absent="nvidia-ml-py is not installed")
        return NvmlView(absent=f"NVML unavailable: {NO_NVML_LIBRARY}")
    try:
        import pynvml
    except ImportError:
        return NvmlView(absent="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        if any(_is(pynvml, exc, name) for name in _ABSENT):
            return NvmlView(absent=f"NVML unavailable: {exc}")
        raise EnvironmentProblem(nvml_line(pynvml, exc, "could not start")) from None
    try:
        gpus, unreadable = [], {}
        for i in range(_ask(pynvml, "could not count the GPUs", pynvml.nvmlDeviceGetCount)):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            except pynvml.NVMLError as exc:
                unreadable[i] = nvml_line(pynvml, exc, f"could not open GPU {i}")
                continue
            gpus.append(
                Gpu(
                    i,
                    str(_ask(pynvml, f"could not read GPU {i}'s UUID", pynvml.nvmlDeviceGetUUID, handle)),
                    str(_ask(pynvml, f"could not read GPU {i}'s name", pynvml.nvmlDeviceGetName, handle)),
                    _mig(pynvml, handle),
                    _pci_bus_id(pynvml, handle),
                    _memory_gb(pynvml, handle),
                )
            )
        return NvmlView(tuple(gpus), unreadable)
    finally:
        with contextlib.suppress(pynvml.NVMLError):  # nothing is left to release
            pynvml.nvmlShutdown()


def _no_nvml_library() -> bool:
    """True where nvidia-ml-py could not open NVML's library either (Linux: it opens only
    ``libnvidia-ml.so.1``, by the loader's search); elsewhere it is left to nvidia-ml-py."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return True
    return False


def _simulated_view(simulation: SimulatedGpus) -> NvmlView:
    """The simulated GPUs as NVML lists GPUs (their PCI order is their index)."""
    gpus = (
        Gpu(d.index, d.uuid, d.name, pci_bus_id=f"SIM:{d.index:04d}", memory_gb=d.memory_mb * MIB / 1e9, simulated=True)
        for d in simulation.devices
    )
    return NvmlView(tuple(gpus))


def _ask(nvml: Any, doing: str, call: Callable[..., T], *args: object) -> T:
    try:
        return call(*args)
    except nvml.NVMLError as exc:
        raise EnvironmentProblem(nvml_line(nvml, exc, doing)) from None


def _mig(nvml: Any, handle: object) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except (nvml.NVMLError, AttributeError):
        return False  # no MIG support on this GPU or driver
    return bool(current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))


def _memory_gb(nvml: Any, handle: object) -> float | None:
    try:
        return float(nvml.nvmlDeviceGetMemoryInfo(handle).total) / 1e9
    except (nvml.NVMLError, AttributeError, TypeError, ValueError):
        return None


def _pci_bus_id(nvml: Any, handle: object) -> str:
    try:
        bus_id = nvml.nvmlDeviceGetPciInfo(handle).busId
    except (nvml.NVMLError, AttributeError):
        return ""
    return (bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id)).upper()


def nvml_gpus() -> tuple[list[Gpu], str | None]:
    """Every GPU NVML opens on this host, and why there are none; never raises (doctor and
    gpu-check say why)."""
    try:
        view = read_nvml()
    except EnvironmentProblem as exc:
        return [], str(exc)
    if view.gpus:
        return list(view.gpus), None
    return [], view.absent or next(iter(view.unreadable.values()), "NVML found no device")


def discover_gpus() -> list[Gpu]:
    """Every GPU NVML opens on this host (what host.json records), or [] (the CPU path)."""
    return nvml_gpus()[0]


def refuse_mig(gpus: Sequence[Gpu]) -> None:
    """MIG slices share their GPU's energy counter and power reading, so a run on one slice
    would be billed for its neighbours' work: llem measures whole GPUs only."""
    mig = [g for g in gpus if g.mig]
    if mig:
        names = ", ".join(f"{g.index} ({g.name})" for g in mig)
        raise EnvironmentProblem(
            f"GPU {names} is in MIG mode; llem measures whole GPUs (a slice shares the GPU's energy counter): "
            f"disable MIG (sudo nvidia-smi -i {mig[0].index} -mig 0) or leave it out with --gpus"
        )


def _listing(gpus: Sequence[Gpu]) -> str:
    return ", ".join(f"{g.index}: {g.uuid} ({g.name})" for g in gpus) or "none"


def _by_uuid(prefix: str, gpus: Sequence[Gpu]) -> list[Gpu]:
    """The GPUs whose UUID starts with ``prefix`` (CUDA accepts any unambiguous prefix)."""
    return [g for g in gpus if g.uuid.lower().startswith(prefix.lower())]


def _refuse_mig_instance(entry: str, where: str) -> NoReturn:
    raise EnvironmentProblem(
        f"{where} names the MIG instance {entry}; llem measures whole GPUs (a slice shares the GPU's "
        "energy counter): give it whole GPUs, by index or GPU-UUID"
    )


def given_gpus(view: NvmlView, visible: str | None, order: str | None = None) -> list[Gpu]:
    """The GPUs this process was given: every GPU NVML opens when ``CUDA_VISIBLE_DEVICES`` is unset,
    else those it names, in its order, read as CUDA reads it.

    An entry is an index, a GPU UUID (``GPU-5c1e...``) or an unambiguous UUID prefix (``GPU-5c1e``).
    An index is CUDA's numbering, which counts the GPUs this process can open: with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` in PCI bus order, which llem follows (NVML's devices sorted by
    bus id). CUDA's default order (fastest first) is the same order on a host whose GPUs are all of
    one model; on a host with mixed models llem cannot know it, and an index that picks some of
    them is refused (set CUDA_DEVICE_ORDER=PCI_BUS_ID, or use UUIDs). As in CUDA, an empty value
    means no GPU (the CPU path), and an empty entry or a negative index ends the list
    (``0,2,-1,1`` is 0 and 2); Slurm's ``NoDevFiles`` means no GPU. Where CUDA would silently stop
    at any other entry that names no GPU here, llem refuses it, as it refuses a ``MIG-`` instance
    and a GPU named twice: one line each.
    """
    if visible is None or view.absent:
        return list(view.gpus)  # with no NVIDIA driver there is nothing to give: the CPU path
    cuda_order = _cuda_order(view.gpus)
    where = f"{VISIBLE_ENV}={visible}"
    given: list[Gpu] = []
    by_index = False
    for raw in visible.split(","):
        entry = raw.strip()
        if _ends_list(entry):
            break
        if entry.upper().startswith("MIG-"):
            _refuse_mig_instance(entry, where)
        if entry.isdigit():
            by_index = True
            if int(entry) >= len(cuda_order):
                raise EnvironmentProblem(f"{where}: there is no GPU {entry} here ({_seen(view, cuda_order)})")
            gpu = cuda_order[int(entry)]
        elif entry.upper().startswith("GPU-") and len(entry) > len("GPU-"):
            found = _by_uuid(entry, view.gpus)
            if len(found) != 1:
                why = "no GPU's UUID starts" if not found else f"{len(found)} GPUs' UUIDs start"
                raise EnvironmentProblem(f"{where}: {why} with {entry} ({_seen(view, cuda_order)})")
            gpu = found[0]
        else:
            raise EnvironmentProblem(f"{where}: {entry!r} is neither a GPU index nor a GPU UUID (GPU-...)")
        if gpu in given:
            raise EnvironmentProblem(f"{where} names GPU {gpu.index} ({gpu.uuid}) twice")
        given.append(gpu)
    names = {g.name for g in view.gpus}
    if by_index and len(names) > 1 and order != "PCI_BUS_ID" and set(given) != set(view.gpus):
        raise EnvironmentProblem(
            f"{where} numbers GPUs in CUDA's default order (fastest first), which llem cannot know on a host "
            f"with different GPU models ({', '.join(sorted(names))}): set {ORDER_ENV}=PCI_BUS_ID, or name them by UUID"
        )
    return given


def _ends_list(entry: str) -> bool:
    """Where CUDA stops reading CUDA_VISIBLE_DEVICES: an empty entry or a negative index; and
    Slurm's value for no GPU, which names no device, so CUDA stops there too."""
    negative = entry.startswith("-") and entry[1:].isdigit()
    return not entry or negative or entry == SLURM_NO_GPU


def _cuda_order(gpus: Sequence[Gpu]) -> list[Gpu]:
    """CUDA's numbering with CUDA_DEVICE_ORDER=PCI_BUS_ID: by PCI bus id (NVML's order if one is unknown)."""
    if all(g.pci_bus_id for g in gpus):
        return sorted(gpus, key=lambda g: g.pci_bus_id)
    return sorted(gpus, key=lambda g: g.index)


def _seen(view: NvmlView, cuda_order: Sequence[Gpu]) -> str:
    """What this process can see, for an error message: CUDA's numbers, and what NVML could not open."""
    numbered = ", ".join(f"{n} = {g.uuid}" for n, g in enumerate(cuda_order))
    text = f"CUDA numbers {len(cuda_order)}: {numbered}" if cuda_order else (view.absent or "NVML sees no GPU")
    if view.unreadable:
        text += f"; NVML could not open GPU {', '.join(str(i) for i in sorted(view.unreadable))}"
    return text


def allowed_gpus(spec: str | None, environ: Mapping[str, str] | None = None) -> tuple[tuple[int, ...], dict[int, str]]:
    """The GPU indices the study may use and their UUIDs: ``--gpus`` (``spec``: NVML indices or
    GPU UUIDs, comma-separated; empty for the CPU path), else every GPU this process was given.

    A ``--gpus`` entry must be one of the GPUs this process was given (``given_gpus``); one that is
    not, or that NVML cannot open, is an EnvironmentProblem naming what is available.
    """
    env = os.environ if environ is None else environ
    visible = env.get(VISIBLE_ENV)
    entries = _parse_gpus(spec)
    if entries == [] or (visible is not None and _gives_none(visible)):
        if entries:
            raise EnvironmentProblem(
                f"--gpus {spec}: this process was given no GPU ({VISIBLE_ENV}={visible!r}); unset it to use GPUs"
            )
        return (), {}
    view = read_nvml()
    if not view.gpus and view.unreadable:
        raise EnvironmentProblem(next(iter(view.unreadable.values())))
    given = given_gpus(view, visible, env.get(ORDER_ENV))
    chosen = given if entries is None else [_pick(entry, spec or "", given, view, visible) for entry in entries]
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"--gpus {spec} names a GPU twice")
    refuse_mig(chosen)
    return tuple(g.index for g in chosen), {g.index: g.uuid for g in chosen}


def _gives_none(visible: str) -> bool:
    return _ends_list(visible.split(",", maxsplit=1)[0].strip())


def _parse_gpus(spec: str | None) -> list[str] | None:
    """``--gpus`` as its entries; None when it is not given."""
    if spec is None:
        return None
    entries = [x.strip() for x in spec.split(",") if x.strip()]
    for entry in entries:
        if not entry.isdigit() and not (entry.upper().startswith(("GPU-", "MIG-")) and len(entry) > len("GPU-")):
            raise ConfigError(
                f"--gpus expects comma-separated GPU indices or UUIDs such as 0,1 or GPU-5c1e..., got {spec!r}"
            )
    return entries


def _pick(entry: str, spec: str, given: Sequence[Gpu], view: NvmlView, visible: str | None) -> Gpu:
    """The GPU one ``--gpus`` entry names (an NVML index or a UUID), if this process was given it."""
    if entry.upper().startswith("MIG-"):
        _refuse_mig_instance(entry, f"--gpus {spec}")
    if entry.isdigit():
        found = [g for g in view.gpus if g.index == int(entry)]
        if not found and int(entry) in view.unreadable:
            raise EnvironmentProblem(f"--gpus {spec}: {view.unreadable[int(entry)]}")
    else:
        found = _by_uuid(entry, view.gpus)
    available = _listing(given) if given else f"none ({view.absent or 'NVML sees no GPU'})"
    if view.unreadable:
        available += f"; NVML could not open GPU {', '.join(str(i) for i in sorted(view.unreadable))}"
    if len(found) > 1:
        raise EnvironmentProblem(f"--gpus {spec}: {len(found)} GPUs' UUIDs start with {entry}; available: {available}")
    if not found:
        raise EnvironmentProblem(f"--gpus {spec}: there is no GPU {entry} here; available: {available}")
    if found[0] not in given:
        gpu = found[0]
        raise EnvironmentProblem(
            f"--gpus {spec}: GPU {gpu.index} ({gpu.uuid}) was not given to this process "
            f"({VISIBLE_ENV}={visible}); available: {available}"
        )
    return found[0]


def devices_needed(config: ExperimentConfig) -> int:
    """How many GPUs one run of ``config`` occupies, as its engine's section says: tensor x
    pipeline parallel size (vLLM, TensorRT-LLM); the PyTorch agent runs one process on one GPU."""
    return config.engine_section().devices_needed()


def assign_devices(config: ExperimentConfig, allowed: list[int]) -> tuple[int, ...]:
    """The GPU indices a run gets: the first ones of ``allowed``, the same for every cycle.

    A fixed assignment keeps each experiment on the same physical device across cycles,
    so device-to-device variation does not leak into the comparison.
    """
    if not allowed:
        return ()
    need = devices_needed(config)
    if need > len(allowed):
        raise EnvironmentProblem(f"a run needs {need} GPUs but only {len(allowed)} are available: {allowed}")
    return tuple(allowed[:need])
