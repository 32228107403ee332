"""Single source of truth for what each engine supports, and what llem's agents honour.

Positive tables only (002): anything absent is unsupported. The experiment validators read
the capability tables; the host reads ``AGENT_FIELDS`` before any run starts, so a setting
that an agent of this version would ignore is refused instead of silently dropped.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel

from llem_agent.contract.engine_sections import PyTorchConfig, QuantAlgo, TensorRTConfig, VLLMConfig, VLLMEngineConfig

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
        "warmup.prefix_cache",
        "passthrough_kwargs",
        "energy_sampler",
        "gpu_telemetry",
        "cold_start",  # the measurement loop's, through the engine protocol: every engine
        "baseline.enabled",
        "baseline.duration_seconds",
        "baseline.strategy",
        "baseline.cache_ttl_seconds",
        "baseline.validation_interval",
        "baseline.drift_threshold",
        "output_dir",  # applied by the host: where the study directory goes (not part of the config hash)
    }
)
# The engine versions llem's images pin (images/vllm, images/tensorrt).
PINNED_VERSIONS: dict[str, str] = {"vllm": "0.33.0", "tensorrt": "1.2.1"}
# Fields of 003 that the pinned engine versions no longer accept (checked against vLLM 0.33.0's
# EngineArgs, AttentionConfig and BeamSearchParams); refused before any GPU time.
NOT_IN_PINNED: dict[str, frozenset[str]] = {
    "vllm": frozenset(
        {
            "vllm.engine.swap_space",
            "vllm.engine.num_scheduler_steps",
            "vllm.engine.max_seq_len_to_capture",
            "vllm.beam_search.early_stopping",
            "vllm.engine.attention.use_prefill_decode_attention",
            "vllm.engine.attention.use_cudnn_prefill",
            "vllm.engine.attention.disable_flashinfer_prefill",
            "vllm.engine.attention.use_trtllm_ragged_deepseek_prefill",
        }
    ),
    "tensorrt": frozenset(),
}


def section_paths(model: type[BaseModel], prefix: str) -> frozenset[str]:
    """Every dotted leaf path of a config section (nested sections expanded)."""
    paths: set[str] = set()
    for name, info in model.model_fields.items():
        nested = [
            a for a in (info.annotation, *get_args(info.annotation)) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        paths |= section_paths(nested[0], f"{prefix}{name}.") if nested else {f"{prefix}{name}"}
    return frozenset(paths)


_LORA = frozenset({"lora.adapter_id", "lora.adapter_path", "lora.merge_weights"})
# Data-parallel PyTorch (num_processes: one model replica per GPU, through accelerate) is not run
# yet; tensor parallelism (tp_plan, tp_size: torchrun) is.
_PYTORCH_NOT_YET = frozenset({"pytorch.num_processes"})
AGENT_FIELDS: dict[str, frozenset[str]] = {
    "pytorch": _UNIVERSAL | (section_paths(PyTorchConfig, "pytorch.") - _PYTORCH_NOT_YET) | _LORA,
    "vllm": _UNIVERSAL | (section_paths(VLLMConfig, "vllm.") - NOT_IN_PINNED["vllm"]) | _LORA,
    "tensorrt": _UNIVERSAL | (section_paths(TensorRTConfig, "tensorrt.") - NOT_IN_PINNED["tensorrt"]),
}
# Fields an agent applies only for some of their values.
AGENT_VALUES: dict[str, dict[str, frozenset[object]]] = {
    # vLLM serves a LoRA adapter unmerged; a merged measurement needs a merged model.
    "vllm": {"lora.merge_weights": frozenset({False})},
}


def refusal_reason(engine: str, path: str) -> str:
    """Why the agent of ``engine`` refuses ``path`` (for the one-line error)."""
    if path.split("=", maxsplit=1)[0] in NOT_IN_PINNED.get(engine, frozenset()):
        return f"{path} (not accepted by the pinned {engine} {PINNED_VERSIONS[engine]})"
    return path


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
        elif path in values and _get(config, path) not in values[path]:
            refused.append(f"{path}={_get(config, path)}")
    return refused


def _get(model: BaseModel, path: str) -> Any:
    value: Any = model
    for part in path.split("."):
        value = getattr(value, part)
    return value
