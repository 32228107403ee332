"""Cross-field rules of the experiment config (001, 004) and the engine support tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from llem.study import study_from_data
from llem_agent.contract import ExperimentConfig, refusal_reason, unsupported_by_agent


def cfg(**data):
    return ExperimentConfig.model_validate({"model": "m", **data})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pytorch": {"load_in_4bit": True, "load_in_8bit": True}}, "mutually exclusive"),
        ({"pytorch": {"torch_compile_mode": "default"}}, "need torch_compile: true"),
        ({"pytorch": {"bnb_4bit_quant_type": "nf4"}}, "need load_in_4bit: true"),
        ({"pytorch": {"use_cache": False, "cache_implementation": "static"}}, "contradicts use_cache: false"),
        ({"pytorch": {"num_beams": 4}}, "num_beams > 1 needs greedy decoding"),
        ({"engine": "tensorrt", "lora": {"adapter_path": "/a"}}, "lora is not supported on tensorrt"),
        ({"lora": {}}, "exactly one of adapter_id and adapter_path"),
        ({"lora": {"adapter_id": "a", "adapter_path": "/b"}}, "exactly one of adapter_id and adapter_path"),
        ({"passthrough_kwargs": {"batch_size": 3}}, "must not shadow real fields: ['batch_size']"),
        ({"passthrough_kwargs": {"dtype": "x"}}, "must not shadow real fields: ['dtype']"),
        ({"engine": "tensorrt", "dtype": "float32"}, "tensorrt does not support dtype 'float32'"),
        ({"engine": "tensorrt", "dtype": "float16", "tensorrt": {"dtype": "bfloat16"}}, "contradicts dtype"),
        ({"engine": "vllm", "tensorrt": {}}, "'tensorrt:' section given but engine is 'vllm'"),
        ({"warmup": {"thermal_floor_seconds": 10}}, "greater than or equal to 30"),
        ({"baseline": {"duration_seconds": 500}}, "less than or equal to 120"),
        (
            {"vllm": {"engine": {"gpu_memory_utilization": 0.9, "kv_cache_memory_bytes": 10}}, "engine": "vllm"},
            "not both",
        ),
    ],
)
def test_invalid_combinations(data, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        cfg(**data)


def test_valid_combinations():
    beam = cfg(decoder={"do_sample": False}, pytorch={"num_beams": 4, "early_stopping": True})
    assert beam.decoding_mode() == "beam"
    q = cfg(pytorch={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"})
    assert q.pytorch.bnb_4bit_quant_type == "nf4"
    trt = cfg(engine="tensorrt", tensorrt={"engine": "tensorrt", "quant_config": {"quant_algo": "FP8"}})
    assert trt.tensorrt.quant.quant_algo == "FP8"
    assert cfg(passthrough_kwargs={"use_bettertransformer": True}).passthrough_kwargs == {"use_bettertransformer": True}


def test_presets_fill_fields_and_explicit_fields_win():
    det = cfg(decoder={"preset": "deterministic"})
    assert (det.decoder.do_sample, det.decoder.temperature, det.decoder.greedy) == (False, 0.0, True)
    mine = cfg(decoder={"preset": "standard", "temperature": 0.3})
    assert (mine.decoder.temperature, mine.decoder.top_p) == (0.3, 0.9)


def test_agent_support_lists_settings_the_agent_would_not_apply():
    assert unsupported_by_agent(cfg(pytorch={"batch_size": 2}, decoder={"do_sample": False}), "pytorch") == []
    assert unsupported_by_agent(cfg(pytorch={"torch_compile": True}), "pytorch") == []
    assert unsupported_by_agent(cfg(pytorch={"num_processes": 2}), "pytorch") == ["pytorch.num_processes"]
    assert unsupported_by_agent(cfg(pytorch={"tp_plan": "auto", "tp_size": 2}), "pytorch") == []  # torchrun
    assert unsupported_by_agent(cfg(energy_sampler="zeus"), "pytorch") == []
    assert unsupported_by_agent(cfg(energy_sampler="nvml"), "pytorch") == []
    assert unsupported_by_agent(cfg(engine="vllm", vllm={"engine": {"enforce_eager": True}}), "vllm") == []
    # 003 names it, the pinned vLLM no longer accepts it: refused, and the reason says so.
    refused = unsupported_by_agent(cfg(engine="vllm", vllm={"engine": {"swap_space": 4}}), "vllm")
    assert refused == ["vllm.engine.swap_space"]
    assert "pinned vllm 0.33.0" in refusal_reason("vllm", refused[0])
    lora = {"adapter_id": "org/adapter", "merge_weights": True}
    assert unsupported_by_agent(cfg(engine="vllm", lora=lora), "vllm") == ["lora.merge_weights=True"]
    assert unsupported_by_agent(cfg(engine="pytorch", lora=lora), "pytorch") == []


def test_identical_grid_points_run_once_and_the_copy_is_reported():
    data = {"model": "m", "sweep": {"g": [{}, {"warmup.n_warmup": 5}, {"warmup.n_warmup": 6}]}}
    study = study_from_data(data, Path("/x/s.yaml"))
    assert len(study.experiments) == 2
    assert [s.reason for s in study.skipped] == ["duplicate of grid point 1"]


def test_quantisation_table_matches_the_schema():
    from llem_agent.contract.support import QUANTISATION_SUPPORT

    assert {"awq", "gptq", "fp8"} <= QUANTISATION_SUPPORT["vllm"]
    assert {"INT8", "W4A16_AWQ", "FP8"} <= QUANTISATION_SUPPORT["tensorrt"]
    assert cfg(pytorch={"load_in_8bit": True}).quantisation() == "bnb_8bit"
    assert cfg(engine="vllm", vllm={"engine": {"quantization": "awq"}}).quantisation() == "awq"
    assert cfg().quantisation() is None


def test_vram_from_the_hub_cache_and_from_config_json_alone(tmp_path):
    import json

    from llem.models import cached_snapshot, estimate_vram, model_facts

    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100}))
    assert cached_snapshot("org/name", tmp_path) == snap
    assert cached_snapshot("org/other", tmp_path) is None
    facts = model_facts(snap)
    assert facts is not None
    assert facts.params_from == "config.json"
    assert facts.n_params == 12 * 2 * 64 * 64 + 100 * 64
    estimate = estimate_vram(cfg(dtype="float32", max_input_tokens=10, max_output_tokens=10), facts)
    assert estimate.weights_gb == facts.n_params * 4 / 1e9
    assert estimate.kv_cache_gb == 2 * 2 * 4 * 16 * 20 * 1 * 4 / 1e9


@pytest.mark.parametrize("mode", ["default", "lite", "max-autotune-no-cudagraphs", "a-mode-of-a-newer-torch"])
def test_torch_compile_mode_is_any_name(mode):
    """003: a string; which modes exist is the image's torch's to say (the agent checks)."""
    assert cfg(pytorch={"torch_compile": True, "torch_compile_mode": mode}).pytorch.torch_compile_mode == mode


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("", "at least 1 character"),
        ("x" * 129, "at most 128 characters"),  # MAX_NAME_CHARS = 128
        ("   ", "must be a name"),
        ("max-\nautotune", "no control characters"),
        ("default\x00", "no control characters"),
        (3, "valid string"),
    ],
)
def test_torch_compile_mode_is_a_bounded_printable_name(mode, message):
    with pytest.raises(ValidationError, match=message):
        cfg(pytorch={"torch_compile": True, "torch_compile_mode": mode})


def test_torch_compile_mode_of_128_characters_is_accepted():
    assert len(cfg(pytorch={"torch_compile": True, "torch_compile_mode": "m" * 128}).pytorch.torch_compile_mode) == 128
