"""Single source of truth for what each engine supports, and what llem's agents honour.

Positive tables only (002): anything absent is unsupported. The experiment validators read
the capability tables; the host reads ``AGENT_FIELDS`` before any run starts, so a setting
that an agent of this version would ignore is refused instead of silently dropped.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel

from llem_agent.contract.engine_sections import QuantAlgo, VLLMEngineConfig

DTYPE_SUPPORT: dict[str, frozenset[str]] = {
    "pytorch": frozenset({"float32", "float16", "bfloat16"}),
    "vllm": frozenset({"float32", "float16", "bfloat16"}),
    "tensorrt": frozenset({"float16", "bfloat16"}),
}
DECODING_SUPPORT: dict[str, frozenset[str]] = {
    "pytorch": frozenset({"greedy", "sampling", "beam"}),
    "vllm": frozenset({"greedy", "sampling", "beam"}),
    "tensorrt": frozenset({"greedy", "sampling"}),
}
LORA_SUPPORT: frozenset[str] = frozenset({"pytorch", "vllm"})
# Quantisation methods per engine, read off the schema's own literals so the two cannot drift.
QUANTISATION_SUPPORT: dict[str, frozenset[str]] = {
    "pytorch": frozenset({"bnb_4bit", "bnb_8bit"}),
    "vllm": frozenset(a for a in get_args(get_args(VLLMEngineConfig.model_fields["quantization"].annotation)[0])),
    "tensorrt": frozenset(get_args(QuantAlgo)),
}

# Dotted config paths the agent of each engine applies in this llem version. Paths set in
# a config but missing here are refused before any container starts.
_UNIVERSAL = frozenset(
    {
        "model",
        "engine",
        "dtype",
        "random_seed",
        "max_input_tokens",
        "max_output_tokens",
        "dataset.source",
        "dataset.n_prompts",
        "dataset.order",
        "decoder.temperature",
        "decoder.do_sample",
        "decoder.top_k",
        "decoder.top_p",
        "decoder.repetition_penalty",
        "decoder.min_p",
        "decoder.min_new_tokens",
        "decoder.preset",
        "warmup.enabled",
        "warmup.n_warmup",
        "warmup.thermal_floor_seconds",
        "warmup.convergence_detection",
        "warmup.cv_threshold",
        "warmup.max_prompts",
        "warmup.window_size",
        "warmup.min_prompts",
        "energy_sampler",
        "gpu_telemetry",
        "baseline.enabled",
        "baseline.duration_seconds",
        "baseline.strategy",
        "baseline.cache_ttl_seconds",
        "baseline.validation_interval",
        "baseline.drift_threshold",
    }
)
AGENT_FIELDS: dict[str, frozenset[str]] = {
    "pytorch": _UNIVERSAL | {"pytorch.batch_size", "pytorch.trust_remote_code", "pytorch.revision"},
}
# Fields an agent applies only for some of their values.
AGENT_VALUES: dict[str, dict[str, frozenset[object]]] = {
    "pytorch": {"energy_sampler": frozenset({"auto", "nvml"})},
}


def explicit_paths(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted paths of every field the user set explicitly to a non-None value."""
    paths: list[str] = []
    for name in sorted(model.model_fields_set):
        value: Any = getattr(model, name)
        if value is None:
            continue
        if isinstance(value, BaseModel):
            nested = explicit_paths(value, f"{prefix}{name}.")
            paths.extend(nested or [f"{prefix}{name}"])
        else:
            paths.append(f"{prefix}{name}")
    return paths


def unsupported_by_agent(config: BaseModel, engine: str) -> list[str]:
    """Explicit settings the agent for ``engine`` would not apply (all of them if no agent)."""
    wired = AGENT_FIELDS.get(engine)
    if wired is None:
        return ["engine"]
    values = AGENT_VALUES.get(engine, {})
    refused = []
    for path in explicit_paths(config):
        if path not in wired:
            refused.append(path)
        elif path in values and getattr(config, path) not in values[path]:
            refused.append(f"{path}={getattr(config, path)}")
    return refused
