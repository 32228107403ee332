"""Experiment config -> engine arguments: pure functions, one family per engine.

Nothing here imports an engine, so every mapping is unit-tested on a CPU machine; the contract
tests (tests/contract/) check the produced keyword names against the real vLLM, TensorRT-LLM
and Transformers classes wherever those libraries are importable (inside the engine images).

None means "the engine's default" (001): a field left at None is never passed, so the engine
decides and the agent records what it decided. Nested configs are returned as plain dicts and
enum members as their names; the engine modules turn them into the libraries' own classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llem_agent.contract import ExperimentConfig


class PassthroughError(ValueError):
    """A ``passthrough_kwargs`` key no engine call takes, or more than one would."""


def route_passthrough(
    kwargs: dict[str, Any] | None, targets: Callable[[], dict[str, frozenset[str]]], fallback: str | None
) -> dict[str, dict[str, Any]]:
    """``passthrough_kwargs`` (001, 003: the escape hatch), each key handed to the one engine
    call that takes it: the target whose parameter names (``known``, read off the engine's own
    classes) hold the key, else ``fallback`` (an engine call that refuses a name it does not
    take itself, as ``from_pretrained`` and TensorRT-LLM's ``LLM()`` do). A key two targets take
    is ambiguous and refused, as is a key none takes where there is no fallback."""
    routes: dict[str, dict[str, Any]] = {}
    if not kwargs:
        return routes
    known = targets()  # asked of the engine's classes only when there is something to route
    for key, value in kwargs.items():
        takers = [target for target, names in known.items() if key in names]
        if len(takers) > 1:
            raise PassthroughError(f"passthrough_kwargs.{key}: taken by more than one call ({', '.join(takers)})")
        target = takers[0] if takers else fallback
        if target is None:
            raise PassthroughError(f"passthrough_kwargs.{key}: no call of this engine takes it ({', '.join(known)})")
        routes.setdefault(target, {})[key] = value
    return routes


def check_passthrough(
    config: ExperimentConfig, routes: dict[str, dict[str, Any]], built: dict[str, dict[str, Any]]
) -> None:
    """No passthrough key may set what llem sets itself: a key of the arguments llem built for the
    same call (``max_new_tokens`` from ``max_output_tokens``, ``seed`` from ``random_seed``), or
    the name of a field of the engine's own section, however deep (``enable_prefix_caching`` is
    ``vllm.engine.enable_prefix_caching``): a study says each setting once, where it is recorded."""
    from llem_agent.contract.config import ENGINE_SECTIONS
    from llem_agent.contract.support import section_paths

    section = {path.rsplit(".", 1)[-1] for path in section_paths(ENGINE_SECTIONS[config.engine], "")}
    for target, given in routes.items():
        for key in given:
            if key in built.get(target, {}):
                raise PassthroughError(
                    f"passthrough_kwargs.{key}: llem sets it for {target} from the study's own fields"
                )
            if key in section:
                raise PassthroughError(f"passthrough_kwargs.{key}: a field of {config.engine}:, set it there")


def _set(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


# --- PyTorch / Transformers --------------------------------------------------------------


def pytorch_load_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """``AutoModelForCausalLM.from_pretrained`` keywords (the dtype is resolved by the engine)."""
    section = config.pytorch
    out: dict[str, Any] = {"trust_remote_code": bool(section and section.trust_remote_code)}
    if section is None:
        return out
    for key in ("revision", "attn_implementation", "device_map", "low_cpu_mem_usage", "tp_plan"):
        _set(out, key, getattr(section, key))
    if section.max_memory is not None:  # accelerate numbers GPUs by int: YAML's "0" is GPU 0
        out["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in section.max_memory.items()}
    _set(out, "tp_size", section.tp_size)
    if section.load_in_4bit or section.load_in_8bit:
        bnb: dict[str, Any] = {"load_in_4bit": bool(section.load_in_4bit), "load_in_8bit": bool(section.load_in_8bit)}
        for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant"):
            _set(bnb, key, getattr(section, key))
        out["quantization_config"] = bnb  # -> transformers.BitsAndBytesConfig(**bnb)
    return out


def pytorch_generate_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """``model.generate`` keywords besides the inputs, the streamer and the pad token."""
    dec, section = config.decoder, config.pytorch
    out: dict[str, Any] = {
        "max_new_tokens": config.max_output_tokens,
        "do_sample": not dec.greedy,
        "repetition_penalty": dec.repetition_penalty,
    }
    if not dec.greedy:
        out.update(temperature=dec.temperature, top_k=dec.top_k, top_p=dec.top_p)
        _set(out, "min_p", dec.min_p)
    _set(out, "min_new_tokens", dec.min_new_tokens)
    if section is not None:
        for key in (
            "num_beams",
            "early_stopping",
            "length_penalty",
            "no_repeat_ngram_size",
            "prompt_lookup_num_tokens",
            "use_cache",
            "cache_implementation",
        ):
            _set(out, key, getattr(section, key))
    return out


class UnknownCompileMode(ValueError):
    """``pytorch.torch_compile_mode`` names no mode of the image's torch."""


def check_compile_mode(config: ExperimentConfig, modes: Callable[[], list[str]], torch_version: str) -> None:
    """``pytorch.torch_compile_mode`` against the modes of the image's torch (003: any string;
    the study cannot know which torch runs it), before the model loads. ``modes``: the names
    ``torch._inductor.list_mode_options()`` gives, asked only when there is a mode to check.
    Only TorchInductor's modes are known: with another ``torch_compile_backend`` the mode is
    that backend's to interpret, and it is passed as given."""
    section = config.pytorch
    if section is None or not section.torch_compile or section.torch_compile_mode is None:
        return
    if section.torch_compile_backend not in (None, "inductor"):
        return
    known = modes()
    if section.torch_compile_mode not in known:
        raise UnknownCompileMode(
            f"pytorch.torch_compile_mode {section.torch_compile_mode!r} is not a mode of torch {torch_version}: "
            f"it knows {', '.join(known)}"
        )


def pytorch_compile_kwargs(config: ExperimentConfig) -> dict[str, Any] | None:
    """``torch.compile`` keywords for the model's forward, or None when compilation is off."""
    section = config.pytorch
    if section is None or not section.torch_compile:
        return None
    out: dict[str, Any] = {}
    _set(out, "mode", section.torch_compile_mode)
    _set(out, "backend", section.torch_compile_backend)
    return out


# --- vLLM --------------------------------------------------------------------------------

# 003 names -> vLLM AttentionConfig names where they differ.
_VLLM_ATTENTION_RENAMES = {"engine": "backend"}


def vllm_engine_kwargs(config: ExperimentConfig, model_source: str) -> dict[str, Any]:
    """``vllm.LLM`` keywords (the EngineArgs fields)."""
    out: dict[str, Any] = {"model": model_source, "seed": config.random_seed, "disable_log_stats": False}
    # disable_log_stats=False: vLLM records per-request first/last token times only with stats on.
    _set(out, "dtype", config.dtype)
    engine = config.vllm.engine if config.vllm else None
    if engine is not None:
        for name in type(engine).model_fields:
            value = getattr(engine, name)
            if value is None or name in ("attention", "speculative_config"):
                continue
            out[name] = value
        if engine.speculative_config is not None:
            out["speculative_config"] = engine.speculative_config.model_dump(exclude_none=True)
        if engine.attention is not None:
            attention = {
                _VLLM_ATTENTION_RENAMES.get(k, k): v for k, v in engine.attention.model_dump(exclude_none=True).items()
            }
            if attention:
                out["attention_config"] = attention
    if config.lora is not None:
        out["enable_lora"] = True
    return out


# vLLM's CPU backend reserves gpu_memory_utilization (0.92 by default) of the node's memory at
# start and refuses when less is free: a default run's fate would hang on the host's page cache.
# Where the study is silent, llem sizes the KV cache from the study instead, with this margin.
CPU_KV_MARGIN = 1.25
CPU_KV_FLOOR_BYTES = 64 << 20
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def vllm_cpu_kv_cache_bytes(config: ExperimentConfig, model_config: dict[str, Any]) -> int | None:
    """``kv_cache_memory_bytes`` for vLLM's CPU backend when the study sets neither it nor
    ``gpu_memory_utilization``: the KV cache that ``max_num_seqs`` requests of the study's
    length need (at least one ``max_model_len`` sequence, as vLLM requires), x1.25, at least
    64 MiB. ``model_config``: the model's config.json. None where either is set or the model's
    shape is unknown (vLLM's default then applies)."""
    engine = config.vllm.engine if config.vllm else None
    if engine is not None and (engine.gpu_memory_utilization is not None or engine.kv_cache_memory_bytes is not None):
        return None

    def first(*keys: str) -> int | None:
        values = [model_config.get(k) for k in keys]
        return next((int(v) for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0), None)

    layers = first("num_hidden_layers", "n_layer")
    heads = first("num_attention_heads", "n_head")
    kv_heads = first("num_key_value_heads") or heads
    hidden = first("hidden_size", "n_embd")
    head_dim = first("head_dim") or (hidden // heads if hidden and heads else None)
    positions = first("max_position_embeddings", "n_positions")
    max_len = (engine.max_model_len if engine else None) or positions
    if not (layers and kv_heads and head_dim and max_len):
        return None
    dtype = config.dtype or str(model_config.get("dtype") or model_config.get("torch_dtype") or "float32")
    per_token = 2 * layers * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 4)  # keys and values
    per_request = min(max_len, (config.max_input_tokens or max_len) + (config.max_output_tokens or max_len))
    seqs = (engine.max_num_seqs if engine else None) or 256  # vLLM's default max_num_seqs
    tokens = max(seqs * per_request, max_len)
    return max(CPU_KV_FLOOR_BYTES, int(tokens * per_token * CPU_KV_MARGIN))


def _sampling(config: ExperimentConfig, greedy: dict[str, Any], no_top_k: int, section: Any) -> dict[str, Any]:
    """SamplingParams keywords shared by vLLM and TensorRT-LLM: the universal decoder, each
    engine's way of saying "greedy" and "no top-k", then the engine's own ``sampling`` section."""
    dec = config.decoder
    out: dict[str, Any] = {
        "max_tokens": config.max_output_tokens,
        "seed": config.random_seed,
        "repetition_penalty": dec.repetition_penalty,
    }
    if dec.greedy:
        out.update(greedy)
    else:
        out.update(temperature=dec.temperature, top_p=dec.top_p, top_k=dec.top_k if dec.top_k > 0 else no_top_k)
        _set(out, "min_p", dec.min_p)
    _set(out, "min_tokens", dec.min_new_tokens)
    if section is not None:
        out.update(section.model_dump(exclude_none=True))
    return out


def vllm_sampling_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """``vllm.SamplingParams`` keywords (vLLM: temperature 0 is greedy, top_k -1 is off)."""
    return _sampling(config, {"temperature": 0.0}, -1, config.vllm.sampling if config.vllm else None)


def vllm_beam_search_kwargs(config: ExperimentConfig) -> dict[str, Any] | None:
    """``vllm.sampling_params.BeamSearchParams`` keywords, or None without ``vllm.beam_search``."""
    beam = config.vllm.beam_search if config.vllm else None
    if beam is None:
        return None
    out: dict[str, Any] = {
        "beam_width": beam.beam_width or 1,
        "max_tokens": beam.max_tokens or config.max_output_tokens,
    }
    _set(out, "length_penalty", beam.length_penalty)
    if not config.decoder.greedy:
        out["temperature"] = config.decoder.temperature
    return out


def vllm_lora_request(config: ExperimentConfig, adapter_dir: str) -> dict[str, Any] | None:
    """``vllm.lora.request.LoRARequest`` keywords for the experiment's adapter."""
    if config.lora is None:
        return None
    return {"lora_name": "llem-adapter", "lora_int_id": 1, "lora_path": adapter_dir}


# --- TensorRT-LLM ------------------------------------------------------------------------


# Keys only the compiled-engine flow (TensorRT-LLM's TrtLlmArgs) accepts: the PyTorch flow's
# arguments forbid extras, so these never reach it (the schema refuses them there too).
TENSORRT_BUILD_ONLY = frozenset({"fast_build", "quant_config", "workspace"})


def tensorrt_backend(config: ExperimentConfig) -> str | None:
    """``tensorrt`` (a compiled engine: built, or prebuilt at engine_path), ``pytorch``, or None
    (TensorRT-LLM's default: the PyTorch flow)."""
    section = config.tensorrt
    if section is None:
        return None
    return "tensorrt" if section.engine_path is not None else section.engine


def tensorrt_llm_kwargs(
    config: ExperimentConfig,
    model_source: str,
    *,
    engine_cache_dir: str | None = None,
    prebuilt_engine_dir: str | None = None,
) -> dict[str, Any]:
    """``tensorrt_llm.LLM`` keywords. ``kv_cache_config``, ``scheduler_config`` and
    ``quant_config`` are dicts for KvCacheConfig, SchedulerConfig and QuantConfig; the enum
    values (policies, quantisation algorithms) are their member names.

    A compiled build gets ``workspace`` on the engine-cache volume (TensorRT-LLM's default is
    a temporary directory: the container's small /tmp tmpfs, which counts against its memory
    limit). A prebuilt engine loads from where the host mounted it (``prebuilt_engine_dir``).
    ``return_perf_metrics`` makes the LLM keep per-request first/last token times.
    """
    section = config.tensorrt
    backend = tensorrt_backend(config)
    model = prebuilt_engine_dir or (section.engine_path if section and section.engine_path else model_source)
    out: dict[str, Any] = {"model": model, "return_perf_metrics": True}
    _set(out, "dtype", config.dtype)
    if section is None:
        return out
    for key in (
        "max_batch_size",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "max_input_len",
        "max_seq_len",
        "max_num_tokens",
        "fast_build",
    ):
        _set(out, key, getattr(section, key))
    if section.dtype is not None:
        out["dtype"] = section.dtype
    if backend is not None:
        out["backend"] = backend  # "pytorch" flow or a compiled "tensorrt" engine
    for name, target in (("kv_cache", "kv_cache_config"), ("scheduler", "scheduler_config"), ("quant", "quant_config")):
        value = getattr(section, name)
        if value is not None:
            dumped = value.model_dump(exclude_none=True)
            if dumped:
                out[target] = dumped
    if backend == "tensorrt":
        if engine_cache_dir is not None and section.engine_path is None:
            out["workspace"] = f"{engine_cache_dir}/workspace"
    else:
        for key in TENSORRT_BUILD_ONLY:
            out.pop(key, None)
    return out


def tensorrt_sampling_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """``tensorrt_llm.SamplingParams`` keywords (TensorRT-LLM: top_k 1 is greedy, 0 is off)."""
    return _sampling(config, {"top_k": 1}, 0, config.tensorrt.sampling if config.tensorrt else None)
