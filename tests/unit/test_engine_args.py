"""Config -> engine keyword arguments: pure functions, checked on the CPU.

tests/contract/ checks the same names against the real engine classes where they import.
"""

from __future__ import annotations

from typing import Any

import pytest

from llem_agent.contract import ExperimentConfig
from llem_agent.engines.args import (
    UnknownCompileMode,
    check_compile_mode,
    pytorch_compile_kwargs,
    pytorch_generate_kwargs,
    pytorch_load_kwargs,
    tensorrt_llm_kwargs,
    tensorrt_sampling_kwargs,
    vllm_beam_search_kwargs,
    vllm_engine_kwargs,
    vllm_lora_request,
    vllm_sampling_kwargs,
)


def cfg(**kwargs: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"model": "org/m", **kwargs})


def test_none_is_never_passed():
    assert pytorch_load_kwargs(cfg()) == {"trust_remote_code": False}
    assert vllm_engine_kwargs(cfg(engine="vllm"), "/m") == {"model": "/m", "seed": 42, "disable_log_stats": False}
    assert tensorrt_llm_kwargs(cfg(engine="tensorrt"), "/m") == {"model": "/m", "return_perf_metrics": True}
    for kwargs in (vllm_sampling_kwargs(cfg(engine="vllm")), tensorrt_sampling_kwargs(cfg(engine="tensorrt"))):
        assert None not in kwargs.values()


def test_pytorch_fields_reach_from_pretrained_and_generate():
    config = cfg(
        pytorch={
            "attn_implementation": "sdpa",
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": "bfloat16",
            "num_beams": 4,
            "early_stopping": True,
            "length_penalty": 0.8,
            "cache_implementation": "static",
            "prompt_lookup_num_tokens": 10,
            "no_repeat_ngram_size": 3,
            "torch_compile": True,
            "torch_compile_mode": "reduce-overhead",
            "revision": "abc123",
        },
        decoder={"do_sample": False},
        max_output_tokens=64,
    )
    load = pytorch_load_kwargs(config)
    assert load["attn_implementation"] == "sdpa" and load["revision"] == "abc123"
    assert load["quantization_config"] == {
        "load_in_4bit": True,
        "load_in_8bit": False,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_type": "nf4",
    }
    gen = pytorch_generate_kwargs(config)
    assert gen["max_new_tokens"] == 64 and gen["do_sample"] is False and "temperature" not in gen
    assert (gen["num_beams"], gen["early_stopping"], gen["length_penalty"]) == (4, True, 0.8)
    assert (gen["cache_implementation"], gen["prompt_lookup_num_tokens"], gen["no_repeat_ngram_size"]) == (
        "static",
        10,
        3,
    )
    assert pytorch_compile_kwargs(config) == {"mode": "reduce-overhead"}
    assert pytorch_compile_kwargs(cfg()) is None


MODES = ["default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"]


def compiled(**pytorch: Any) -> ExperimentConfig:
    return cfg(pytorch={"torch_compile": True, **pytorch})


def test_a_compile_mode_torch_knows_passes():
    asked: list[bool] = []

    def modes() -> list[str]:
        asked.append(True)
        return MODES

    check_compile_mode(compiled(torch_compile_mode="max-autotune"), modes, "2.9.0")
    check_compile_mode(compiled(torch_compile_mode="default", torch_compile_backend="inductor"), modes, "2.9.0")
    assert asked == [True, True]
    check_compile_mode(compiled(), modes, "2.9.0")  # no mode: torch's default, nothing to check
    check_compile_mode(cfg(), modes, "2.9.0")  # no compile at all
    assert asked == [True, True]  # torch is not even asked


def test_a_compile_mode_torch_does_not_know_fails_in_one_line_naming_the_modes():
    with pytest.raises(UnknownCompileMode) as info:
        check_compile_mode(compiled(torch_compile_mode="lite"), lambda: MODES, "2.9.0")
    assert str(info.value) == (
        "pytorch.torch_compile_mode 'lite' is not a mode of torch 2.9.0: it knows default, reduce-overhead, "
        "max-autotune-no-cudagraphs, max-autotune"
    )
    check_compile_mode(compiled(torch_compile_mode="lite"), lambda: [*MODES, "lite"], "2.13.0")  # a newer torch


def test_another_backend_interprets_its_own_mode():
    def never() -> list[str]:
        raise AssertionError("inductor's modes asked for another backend")

    check_compile_mode(compiled(torch_compile_mode="anything", torch_compile_backend="cudagraphs"), never, "2.9.0")


def test_the_installed_torch_knows_the_003_modes_and_load_refuses_another_before_loading(tmp_path):
    pytest.importorskip("torch")
    from llem_agent.engines.pytorch import PyTorchEngine, compile_modes

    assert set(MODES) <= set(compile_modes())
    missing = str(tmp_path / "no-model-here")  # load would fail on this later, with another error
    refused = r"'max-autotune-plus' is not a mode of torch 2\.\S+: it knows default"
    with pytest.raises(UnknownCompileMode, match=refused):
        PyTorchEngine().load(compiled(torch_compile_mode="max-autotune-plus"), missing)


def test_sampling_settings_only_when_sampling():
    sampled = pytorch_generate_kwargs(cfg(decoder={"temperature": 0.7, "top_p": 0.9, "top_k": 0, "min_p": 0.05}))
    assert (sampled["temperature"], sampled["top_p"], sampled["min_p"]) == (0.7, 0.9, 0.05)
    vllm = vllm_sampling_kwargs(cfg(engine="vllm", decoder={"temperature": 0.7, "top_k": 0}))
    assert vllm["top_k"] == -1  # vLLM spells "no top-k" as -1
    greedy = vllm_sampling_kwargs(cfg(engine="vllm", decoder={"do_sample": False}))
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy
    trt = tensorrt_sampling_kwargs(cfg(engine="tensorrt", decoder={"do_sample": False}))
    assert trt["top_k"] == 1 and "temperature" not in trt


def test_vllm_engine_sampling_beam_and_lora():
    config = cfg(
        engine="vllm",
        dtype="float16",
        max_output_tokens=50,
        vllm={
            "engine": {
                "gpu_memory_utilization": 0.8,
                "tensor_parallel_size": 2,
                "enable_prefix_caching": True,
                "kv_cache_dtype": "fp8",
                "speculative_config": {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3},
                "attention": {"engine": "FLASHINFER", "flash_attn_version": 3},
                "compilation_config": {"level": 3},
            },
            "sampling": {"max_tokens": 20, "ignore_eos": True, "presence_penalty": 0.5},
        },
        lora={"adapter_path": "./adapter"},
    )
    engine = vllm_engine_kwargs(config, "/llem/model")
    assert engine["model"] == "/llem/model" and engine["dtype"] == "float16" and engine["seed"] == 42
    assert (engine["gpu_memory_utilization"], engine["tensor_parallel_size"], engine["kv_cache_dtype"]) == (
        0.8,
        2,
        "fp8",
    )
    assert engine["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
    assert engine["attention_config"] == {"backend": "FLASHINFER", "flash_attn_version": 3}
    assert engine["compilation_config"] == {"level": 3} and engine["enable_lora"] is True
    assert "attention" not in engine
    sampling = vllm_sampling_kwargs(config)
    assert sampling["max_tokens"] == 20  # vllm.sampling wins over max_output_tokens
    assert sampling["ignore_eos"] is True and sampling["presence_penalty"] == 0.5
    assert vllm_lora_request(config, "/llem/adapter") == {
        "lora_name": "llem-adapter",
        "lora_int_id": 1,
        "lora_path": "/llem/adapter",
    }
    beam = vllm_beam_search_kwargs(cfg(engine="vllm", vllm={"beam_search": {"beam_width": 4, "length_penalty": 1.2}}))
    assert beam == {"beam_width": 4, "max_tokens": 256, "length_penalty": 1.2, "temperature": 1.0}
    assert vllm_beam_search_kwargs(config) is None


def test_tensorrt_llm_kwargs():
    config = cfg(
        engine="tensorrt",
        tensorrt={
            "max_batch_size": 16,
            "tensor_parallel_size": 2,
            "max_seq_len": 4096,
            "dtype": "bfloat16",
            "engine": "tensorrt",
            "quant_config": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"},
            "kv_cache": {"free_gpu_memory_fraction": 0.85, "enable_block_reuse": False},
            "scheduler": {"capacity_scheduler_policy": "MAX_UTILIZATION"},
            "sampling": {"ignore_eos": True},
        },
    )
    kwargs = tensorrt_llm_kwargs(config, "/llem/model")
    assert kwargs["model"] == "/llem/model" and kwargs["backend"] == "tensorrt" and kwargs["dtype"] == "bfloat16"
    assert (kwargs["max_batch_size"], kwargs["tensor_parallel_size"], kwargs["max_seq_len"]) == (16, 2, 4096)
    assert kwargs["quant_config"] == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    assert kwargs["kv_cache_config"] == {"free_gpu_memory_fraction": 0.85, "enable_block_reuse": False}
    assert kwargs["scheduler_config"] == {"capacity_scheduler_policy": "MAX_UTILIZATION"}
    assert tensorrt_sampling_kwargs(config)["ignore_eos"] is True
    prebuilt = tensorrt_llm_kwargs(cfg(engine="tensorrt", tensorrt={"engine_path": "/engines/llama"}), "/m")
    assert prebuilt["model"] == "/engines/llama"


def test_lora_on_tensorrt_is_a_parse_error():
    with pytest.raises(ValueError, match="lora is not supported on tensorrt"):
        cfg(engine="tensorrt", lora={"adapter_id": "org/adapter"})
