"""Host GPU discovery through NVML (nvidia-ml-py); no GPU means the CPU path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llem_agent.contract import ExperimentConfig


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    mig: bool = False  # MIG mode on: its slices share one energy counter, llem measures whole GPUs


def nvml_gpus() -> tuple[list[Gpu], str | None]:
    """GPUs NVML sees on this host, and why there are none (no driver, no device)."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"NVML unavailable: {exc}"
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append(
                Gpu(
                    i,
                    str(pynvml.nvmlDeviceGetUUID(handle)),
                    str(pynvml.nvmlDeviceGetName(handle)),
                    _mig(pynvml, handle),
                )
            )
        return gpus, None if gpus else "NVML found no device"
    finally:
        pynvml.nvmlShutdown()


def _mig(nvml: Any, handle: object) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except (nvml.NVMLError, AttributeError):
        return False  # no MIG support on this GPU or driver
    return bool(current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))


def refuse_mig(gpus: list[Gpu]) -> None:
    """MIG slices share their GPU's energy counter and power reading, so a run on one slice
    would be billed for its neighbours' work: llem measures whole GPUs only."""
    mig = [g for g in gpus if g.mig]
    if mig:
        from orchestrator.errors import EnvironmentProblem

        names = ", ".join(f"{g.index} ({g.name})" for g in mig)
        raise EnvironmentProblem(
            f"GPU {names} is in MIG mode; llem measures whole GPUs (a slice shares the GPU's energy counter): "
            f"disable MIG (sudo nvidia-smi -i {mig[0].index} -mig 0) or leave it out with --gpus"
        )


def discover_gpus() -> list[Gpu]:
    """GPUs NVML sees on this host, or [] when there is no driver or no device (the CPU path)."""
    return nvml_gpus()[0]


def devices_needed(config: ExperimentConfig) -> int:
    """How many GPUs one run of ``config`` occupies: tensor x pipeline parallel size (vLLM,
    TensorRT-LLM); the PyTorch agent runs one process on one GPU."""
    if config.engine == "vllm" and config.vllm and config.vllm.engine:
        engine = config.vllm.engine
        return (engine.tensor_parallel_size or 1) * (engine.pipeline_parallel_size or 1)
    if config.engine == "tensorrt" and config.tensorrt:
        return (config.tensorrt.tensor_parallel_size or 1) * (config.tensorrt.pipeline_parallel_size or 1)
    return 1


def assign_devices(config: ExperimentConfig, allowed: list[int]) -> tuple[int, ...]:
    """The GPU indices a run gets: the first ones of ``allowed``, the same for every cycle.

    A fixed assignment keeps each experiment on the same physical device across cycles,
    so device-to-device variation does not leak into the comparison.
    """
    if not allowed:
        return ()
    need = devices_needed(config)
    if need > len(allowed):
        from orchestrator.errors import EnvironmentProblem

        raise EnvironmentProblem(f"a run needs {need} GPUs but only {len(allowed)} are available: {allowed}")
    return tuple(allowed[:need])
