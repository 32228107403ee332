"""Engine-argument contract checks: every keyword llem's pure argument functions produce must be
a parameter of the real engine class it is meant for.

Plain functions with no pytest dependency, so they run under pytest (test_engine_contracts.py,
wherever the engine imports) and as a script inside an engine image:
    python tests/contract/checks.py pytorch|vllm|tensorrt
A version bump that renames or removes an argument fails here, loudly, before any GPU time.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any

from llem_agent.contract import NOT_IN_PINNED, ExperimentConfig


def _names(cls: Any) -> set[str]:
    """Parameter names of a dataclass, pydantic model, msgspec struct or plain class."""
    if dataclasses.is_dataclass(cls):
        init = {n for n, p in inspect.signature(cls).parameters.items() if p.kind is not p.VAR_KEYWORD}
        return {f.name for f in dataclasses.fields(cls)} | init
    if hasattr(cls, "model_fields"):
        fields = set(cls.model_fields)
        aliases = {f.alias for f in cls.model_fields.values() if getattr(f, "alias", None)}
        return fields | aliases
    if hasattr(cls, "__struct_fields__"):
        return set(cls.__struct_fields__)
    return set(inspect.signature(cls).parameters)


def _missing(produced: dict[str, Any], cls: Any) -> list[str]:
    return sorted(set(produced) - _names(cls))


def _unknown(pairs: list[tuple[dict[str, Any], Any]]) -> list[str]:
    """One problem per (keywords, class) pair whose keywords the class does not take."""
    return [f"{cls.__name__} has no {bad}" for produced, cls in pairs if (bad := _missing(produced, cls))]


def full_config(engine: str) -> ExperimentConfig:
    """An experiment that sets every field of the engine's section the agent applies."""
    sections: dict[str, dict[str, Any]] = {
        "pytorch": {
            "pytorch": {
                "batch_size": 1, "attn_implementation": "sdpa", "num_beams": 2, "early_stopping": True,
                "length_penalty": 1.0, "no_repeat_ngram_size": 3, "prompt_lookup_num_tokens": 5, "use_cache": True,
                "cache_implementation": "static", "low_cpu_mem_usage": True, "revision": "main",
                "device_map": "auto", "max_memory": {0: "10GiB"}, "load_in_4bit": True,
                "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            },
            "decoder": {"do_sample": False, "min_new_tokens": 1},
        },
        "vllm": {
            "vllm": {
                "engine": {
                    "gpu_memory_utilization": 0.8, "cpu_offload_gb": 1, "block_size": 16, "kv_cache_dtype": "auto",
                    "enforce_eager": True, "enable_chunked_prefill": True, "max_num_seqs": 8,
                    "max_num_batched_tokens": 4096, "max_model_len": 2048, "tensor_parallel_size": 1,
                    "pipeline_parallel_size": 1, "enable_prefix_caching": True, "quantization": "fp8",
                    "distributed_executor_backend": "mp", "offload_group_size": 0, "offload_num_in_group": 1,
                    "offload_prefetch_step": 1, "offload_params": ["mlp"], "disable_custom_all_reduce": True,
                    "compilation_config": {"mode": 0},
                    "speculative_config": {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3,
                                           "prompt_lookup_min": 1, "draft_tensor_parallel_size": 1, "model": "m"},
                    "attention": {"engine": "FLASH_ATTN", "flash_attn_version": 2,
                                  "flash_attn_max_num_splits_for_cuda_graph": 8,
                                  "use_prefill_query_quantization": False,
                                  "disable_flashinfer_q_quantization": False, "use_trtllm_attention": False},
                },
                "sampling": {"min_tokens": 1, "presence_penalty": 0.1, "frequency_penalty": 0.1, "ignore_eos": True,
                             "n": 1},
            },
            "decoder": {"temperature": 0.7, "min_p": 0.05},
            "lora": {"adapter_id": "org/adapter"},
        },
        "tensorrt": {
            "tensorrt": {
                "max_batch_size": 8, "tensor_parallel_size": 1, "pipeline_parallel_size": 1, "max_input_len": 512,
                "max_seq_len": 1024, "max_num_tokens": 2048, "dtype": "bfloat16", "fast_build": True,
                "quant": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "group_size": 128,
                          "exclude_modules": ["lm_head"]},
                "kv_cache": {"free_gpu_memory_fraction": 0.8, "enable_block_reuse": True, "max_tokens": 4096,
                             "dtype": "auto"},
                "scheduler": {"capacity_scheduler_policy": "GUARANTEED_NO_EVICT",
                              "context_chunking_policy": "FIRST_COME_FIRST_SERVED"},
                "sampling": {"min_tokens": 1, "presence_penalty": 0.1, "frequency_penalty": 0.1, "ignore_eos": True,
                             "n": 1},
            },
            "decoder": {"temperature": 0.7, "min_p": 0.05},
        },
    }  # fmt: skip
    return ExperimentConfig.model_validate({"model": "org/m", "engine": engine, **sections[engine]})


def check_pytorch() -> list[str]:
    from transformers import BitsAndBytesConfig, GenerationConfig

    from llem_agent.engines.args import pytorch_generate_kwargs, pytorch_load_kwargs

    config = full_config("pytorch")
    sampled = ExperimentConfig.model_validate({"model": "m", "decoder": {"temperature": 0.7, "min_p": 0.05}})
    problems = []
    generation = set(GenerationConfig().to_dict())
    for produced in (pytorch_generate_kwargs(config), pytorch_generate_kwargs(sampled)):
        bad = sorted(set(produced) - generation - {"tokenizer"})
        if bad:
            problems.append(f"GenerationConfig has no {bad}")
    problems += _unknown([(pytorch_load_kwargs(config)["quantization_config"], BitsAndBytesConfig)])
    return problems


def check_vllm() -> list[str]:
    from vllm.config import AttentionConfig, SpeculativeConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import BeamSearchParams, SamplingParams

    from llem_agent.engines import args

    config = full_config("vllm")
    engine = args.vllm_engine_kwargs(config, "/m")
    beam = ExperimentConfig.model_validate(
        {"model": "m", "engine": "vllm", "vllm": {"beam_search": {"beam_width": 2, "length_penalty": 1.0}}}
    )
    problems = _unknown(
        [
            (engine, EngineArgs),
            (engine["attention_config"], AttentionConfig),
            (engine["speculative_config"], SpeculativeConfig),
            (args.vllm_sampling_kwargs(config), SamplingParams),
            (args.vllm_lora_request(config, "/a") or {}, LoRARequest),
            (args.vllm_beam_search_kwargs(beam) or {}, BeamSearchParams),
        ]
    )
    # Names are not enough: the values must construct (types, enum names such as the backend).
    for cls, produced in (
        (EngineArgs, engine),
        (SamplingParams, args.vllm_sampling_kwargs(config)),
        (BeamSearchParams, args.vllm_beam_search_kwargs(beam) or {}),
        (LoRARequest, args.vllm_lora_request(config, "/a") or {}),
    ):
        try:
            cls(**produced)
        except Exception as exc:
            problems.append(f"{cls.__name__}(**kwargs) failed: {str(exc).splitlines()[0]}")
    # The per-request timings the vLLM agent reads.
    from vllm.v1.metrics.stats import RequestStateStats

    needed = {"arrival_time", "first_token_latency", "first_token_ts", "last_token_ts"}
    if needed - _names(RequestStateStats):
        problems.append(f"RequestStateStats has no {sorted(needed - _names(RequestStateStats))}")
    # The table of 003 fields the pinned version refuses must stay true: each is really absent.
    renames = {"engine": "backend"}
    for path in NOT_IN_PINNED["vllm"]:
        *_, section, name = path.split(".")
        cls = {"engine": EngineArgs, "attention": AttentionConfig, "beam_search": BeamSearchParams}[section]
        if renames.get(name, name) in _names(cls):
            problems.append(f"{path} is listed as refused but {cls.__name__} accepts it")
    return problems


def check_tensorrt() -> list[str]:
    from tensorrt_llm import SamplingParams
    from tensorrt_llm.llmapi import KvCacheConfig, QuantConfig, SchedulerConfig
    from tensorrt_llm.llmapi.llm_args import TorchLlmArgs, TrtLlmArgs

    from llem_agent.engines import args

    config = full_config("tensorrt")
    kwargs = args.tensorrt_llm_kwargs(config, "/m")

    top = {k: v for k, v in kwargs.items() if k != "backend"}
    problems = _unknown(
        [
            (top, TrtLlmArgs),
            (kwargs["kv_cache_config"], KvCacheConfig),
            (kwargs["scheduler_config"], SchedulerConfig),
            (kwargs["quant_config"], QuantConfig),
            (args.tensorrt_sampling_kwargs(config) | {"return_perf_metrics": True}, SamplingParams),
        ]
    )
    build_only = {"max_input_len", "fast_build"}  # TensorRT-engine flow only
    bad = sorted(set(_missing(top, TorchLlmArgs)) - build_only)
    if bad:
        problems.append(f"TorchLlmArgs has no {bad}")
    return problems


CHECKS = {"pytorch": check_pytorch, "vllm": check_vllm, "tensorrt": check_tensorrt}

if __name__ == "__main__":
    found = CHECKS[sys.argv[1]]()
    for problem in found:
        print(f"contract: {problem}")
    print(f"{sys.argv[1]}: {'OK' if not found else f'{len(found)} problem(s)'}")
    raise SystemExit(1 if found else 0)
