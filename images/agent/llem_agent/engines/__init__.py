"""Engines by name, imported lazily so that choosing one never imports another's stack."""

from __future__ import annotations

import importlib

from llem_agent.engines.base import Engine

_REGISTRY: dict[str, str] = {
    "pytorch": "llem_agent.engines.pytorch:PyTorchEngine",
    "vllm": "llem_agent.engines.vllm:VLLMEngine",
    "tensorrt": "llem_agent.engines.tensorrt:TensorRTEngine",
}


class EngineUnavailable(RuntimeError):
    """This image has no agent for the requested engine."""


def load_engine(name: str) -> Engine:
    """Instantiate the engine registered under ``name`` (imports its module on demand)."""
    target = _REGISTRY.get(name)
    if target is None:
        raise EngineUnavailable(f"engine '{name}' is not available in this image (have: {sorted(_REGISTRY)})")
    module_name, _, class_name = target.partition(":")
    engine: Engine = getattr(importlib.import_module(module_name), class_name)()
    return engine
