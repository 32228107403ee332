"""Engines by name, imported lazily so that choosing one never imports another's stack."""

from __future__ import annotations

import importlib

from llem_agent.contract.config import ENGINE_SECTIONS
from llem_agent.engines.base import Engine

# "module:Class" of each engine's agent, as its config section names it (its ``agent`` trait).
_REGISTRY: dict[str, str] = {name: section.agent for name, section in ENGINE_SECTIONS.items()}


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
