"""Engine traits on each engine's config section: what the host and the agent ask of an engine
instead of branching on its name (llem_agent.contract.engine_sections.EngineSection)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest

from llem.errors import ConfigError
from llem.local_runner import ENGINE_IMPORTS
from llem.models import ModelFacts, estimate_vram, resolve_trt_engine_dir
from llem_agent.contract import (
    DEFAULT_ENGINE,
    ENGINE_SECTIONS,
    ENGINES,
    EngineSection,
    ExperimentConfig,
    PyTorchConfig,
    TensorRTConfig,
    VLLMConfig,
)
from llem_agent.contract.config import EngineName
from llem_agent.engines import _REGISTRY


def config(name: str, section: dict[str, Any] | None = None) -> ExperimentConfig:
    data: dict[str, Any] = {"model": "m", "engine": name}
    if section:
        data[name] = section
    return ExperimentConfig.model_validate(data)


def test_every_engine_has_a_section_and_a_config_field():
    assert ENGINES == ("pytorch", "vllm", "tensorrt") == get_args(EngineName)
    assert {"pytorch": PyTorchConfig, "vllm": VLLMConfig, "tensorrt": TensorRTConfig} == ENGINE_SECTIONS
    assert DEFAULT_ENGINE == ExperimentConfig.model_fields["engine"].default == "pytorch"
    for engine, section in ENGINE_SECTIONS.items():
        assert issubclass(section, EngineSection)
        assert ExperimentConfig.model_fields[engine].annotation == section | None


def test_traits_are_not_fields_so_the_schema_does_not_see_them():
    traits = {"agent", "stack_imports", "multiprocess", "builds_engines", "make_images"}
    for section in ENGINE_SECTIONS.values():
        assert not traits & set(section.model_fields)
        assert not traits & set(section.model_json_schema()["properties"])


def test_what_must_import_for_each_agent():
    assert {e: s.import_check() for e, s in ENGINE_SECTIONS.items()} == {
        "pytorch": ("torch", "transformers", "llem_agent.engines.pytorch"),
        "vllm": ("vllm", "llem_agent.engines.vllm"),
        "tensorrt": ("tensorrt_llm", "llem_agent.engines.tensorrt"),
    }
    # The local runner's probe: `python -c "import <these>"`.
    assert ENGINE_IMPORTS == {
        "pytorch": "torch, transformers, llem_agent.engines.pytorch",
        "vllm": "vllm, llem_agent.engines.vllm",
        "tensorrt": "tensorrt_llm, llem_agent.engines.tensorrt",
    }
    assert _REGISTRY == {
        "pytorch": "llem_agent.engines.pytorch:PyTorchEngine",
        "vllm": "llem_agent.engines.vllm:VLLMEngine",
        "tensorrt": "llem_agent.engines.tensorrt:TensorRTEngine",
    }


def test_which_engines_run_worker_processes_build_engines_and_are_built_by_make_images():
    assert [e for e, s in ENGINE_SECTIONS.items() if s.multiprocess] == ["vllm", "tensorrt"]
    assert [e for e, s in ENGINE_SECTIONS.items() if s.builds_engines] == ["tensorrt"]
    assert [e for e, s in ENGINE_SECTIONS.items() if s.make_images] == ["pytorch"]


@pytest.mark.parametrize(
    ("engine", "section", "devices"),
    [
        ("pytorch", {}, 1),
        ("pytorch", {"tp_plan": "auto", "tp_size": 4}, 4),  # four processes under torchrun, a GPU each
        ("pytorch", {"device_map": "auto"}, 1),  # names no GPUs: the run's one
        ("pytorch", {"device_map": "auto", "max_memory": {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}}, 2),
        ("pytorch", {"device_map": "balanced", "max_memory": {"0": "9GiB", "1": "9GiB", "2": "9GiB"}}, 3),
        ("vllm", {}, 1),
        ("vllm", {"sampling": {"max_tokens": 8}}, 1),  # no engine: section, so no parallelism
        ("vllm", {"engine": {"tensor_parallel_size": 2, "pipeline_parallel_size": 3}}, 6),
        ("vllm", {"engine": {"pipeline_parallel_size": 2}}, 2),
        ("tensorrt", {}, 1),
        ("tensorrt", {"tensor_parallel_size": 4}, 4),
        ("tensorrt", {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, 4),
    ],
)
def test_devices_needed(engine: str, section: dict[str, Any], devices: int):
    assert config(engine, section).engine_section().devices_needed() == devices


@pytest.mark.parametrize(
    ("section", "processes"),
    [
        ({}, 1),
        ({"tp_plan": "auto", "tp_size": 2}, 2),
        ({"device_map": "auto", "max_memory": {0: "1GiB", 1: "1GiB"}}, 1),
    ],
)
def test_only_tensor_parallelism_starts_more_than_one_pytorch_agent_process(section: dict[str, Any], processes: int):
    assert config("pytorch", section).engine_section().processes() == processes
    assert config("vllm", {"engine": {"tensor_parallel_size": 2}}).engine_section().processes() == 1  # its own workers


@pytest.mark.parametrize(
    ("section", "said"),
    [
        ({"tp_size": 2}, "tp_size needs tp_plan: auto"),
        ({"tp_plan": "auto"}, "tp_plan: auto needs tp_size"),
        ({"tp_plan": "colwise", "tp_size": 2}, "transformers takes 'auto'"),
        ({"tp_plan": "auto", "tp_size": 2, "device_map": "auto"}, "use one of them"),
        ({"max_memory": {0: "1GiB"}}, "max_memory needs device_map"),
        ({"device_map": "auto", "max_memory": {1: "1GiB"}}, "GPUs are numbered 0..N-1"),
        ({"device_map": "auto", "max_memory": {0: "1GiB", "gpu1": "1GiB"}}, "GPUs are numbered 0..N-1"),
    ],
)
def test_how_many_gpus_a_pytorch_run_spreads_over_is_said_in_full(section: dict[str, Any], said: str):
    with pytest.raises(ValueError, match=re.escape(said)):
        config("pytorch", section)


@pytest.mark.parametrize(
    ("engine", "section", "batch"),
    [
        ("pytorch", {}, None),
        ("pytorch", {"batch_size": 8}, 8),
        ("vllm", {"engine": {"max_num_seqs": 32}}, 32),
        ("vllm", {"sampling": {"n": 1}}, None),
        ("tensorrt", {"max_batch_size": 16}, 16),
    ],
)
def test_max_batch(engine: str, section: dict[str, Any], batch: int | None):
    assert config(engine, section).engine_section().max_batch() == batch


def test_the_vram_estimate_reads_the_batch_and_the_quantisation_through_the_section():
    # 1e9 parameters, 2 layers x 2 KV heads x 64 dims, sequence 256 + 256 = 512 tokens, bfloat16.
    facts = ModelFacts(1_000_000_000, 2, 2, 64, "config.json")
    kv_one = 2 * 2 * 2 * 64 * 512 * 2 / 1e9  # one sequence: 0.000524288 GB
    eight_bit = estimate_vram(config("pytorch", {"load_in_8bit": True, "batch_size": 4}), facts)
    assert eight_bit.weights_gb == pytest.approx(1.0) and eight_bit.kv_cache_gb == pytest.approx(4 * kv_one)
    four_bit = estimate_vram(config("pytorch", {"load_in_4bit": True}), facts)
    assert four_bit.weights_gb == pytest.approx(0.5) and four_bit.kv_cache_gb == pytest.approx(kv_one)
    awq = estimate_vram(config("vllm", {"engine": {"quantization": "awq", "max_num_seqs": 2}}), facts)
    assert awq.weights_gb == pytest.approx(2.0) and awq.kv_cache_gb == pytest.approx(2 * kv_one)  # as bfloat16


def test_quantisation_and_beam_search_through_the_section():
    assert config("pytorch", {"load_in_8bit": True}).quantisation() == "bnb_8bit"
    assert config("pytorch", {"load_in_4bit": True}).quantisation() == "bnb_4bit"
    assert config("vllm", {"engine": {"quantization": "awq"}}).quantisation() == "awq"
    assert config("tensorrt", {"engine": "tensorrt", "quant": {"quant_algo": "FP8"}}).quantisation() == "FP8"
    assert config("vllm").quantisation() is None and config("tensorrt").quantisation() is None
    greedy = {"model": "m", "decoder": {"do_sample": False}}
    assert ExperimentConfig.model_validate({**greedy, "pytorch": {"num_beams": 2}}).decoding_mode() == "beam"
    assert ExperimentConfig.model_validate({**greedy, "pytorch": {"num_beams": 1}}).decoding_mode() == "greedy"
    beams = {"model": "m", "engine": "vllm", "vllm": {"beam_search": {"beam_width": 2}}}
    assert ExperimentConfig.model_validate(beams).decoding_mode() == "beam"
    assert config("tensorrt").decoding_mode() == "sampling"


def test_a_prebuilt_engine_comes_from_the_section(tmp_path: Path):
    (tmp_path / "engines" / "llama").mkdir(parents=True)
    (tmp_path / "engines" / "llama" / "config.json").write_text("{}")
    trt = config("tensorrt", {"engine_path": "engines/llama"})
    assert trt.engine_section().prebuilt_engine() == "engines/llama"
    assert resolve_trt_engine_dir(trt, tmp_path) == (tmp_path / "engines" / "llama").resolve()
    assert config("vllm").engine_section().prebuilt_engine() is None
    assert resolve_trt_engine_dir(config("pytorch"), tmp_path) is None
    missing = config("tensorrt", {"engine_path": "nowhere"})
    with pytest.raises(ConfigError, match=r"^tensorrt\.engine_path: no TensorRT engine \(config\.json\) in "):
        resolve_trt_engine_dir(missing, tmp_path)
