"""The narrow interface every engine implements; the measurement loop sees only this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llem_agent.contract import AgentEnvironment, ExperimentConfig
from llem_agent.metrics import BatchObservation


@dataclass(frozen=True)
class RunDirs:
    """Where this run's engine keeps what outlives it, as the agent sees the paths (a container
    mount or, with the local runner, a host directory)."""

    engine_cache: str | None = None  # compiled TensorRT engines, reused across runs
    prebuilt_engine: str | None = None  # tensorrt.engine_path, mounted read-only


class Engine(Protocol):
    """Load once, then generate batches. Everything engine-specific stays behind it."""

    def load(
        self,
        config: ExperimentConfig,
        model_source: str,
        adapter_source: str | None = None,
        dirs: RunDirs | None = None,
    ) -> None:
        """Import the engine's stack and load model and tokenizer (and the LoRA adapter, if any)."""

    def batch_size(self) -> int:
        """Effective number of prompts per generate call."""

    def prepare(self, prompts: list[str]) -> object:
        """Tokenize one batch (done before the measured window opens)."""

    def generate(self, batch: object) -> BatchObservation:
        """Run one prepared batch; token times are seconds since the call began, synchronised."""

    def synchronize(self) -> None:
        """Wait until all queued device work has finished."""

    def prefix_cache(self) -> bool | None:
        """Whether the engine keeps a prefix / KV-block cache from one request to the next
        (vLLM's prefix caching, TensorRT-LLM's block reuse); None when it cannot tell."""

    def reset_prefix_cache(self) -> bool:
        """Empty that cache (after warm-up, so no measured prefill is served from it); False
        where the engine offers no way to, or refused."""

    def effective(self) -> dict[str, str | int | float | bool | None]:
        """The engine defaults this run resolved (dtype, batch size, device...)."""

    def passthrough(self) -> dict[str, str]:
        """Where each ``passthrough_kwargs`` key went: the engine call that received it."""

    def n_parameters(self) -> int | None:
        """Parameters of the loaded model (for the FLOPs estimate); None when unknown."""

    def peak_device_memory_mb(self) -> float | None:
        """Peak device memory allocated since load, or None on CPU."""

    def environment(self) -> AgentEnvironment:
        """Versions and device facts."""
