"""Every example of 003's "Study / Sweep" section, with the count 003 states for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from llem.errors import ConfigError
from llem.plan import make_plan
from llem.study import load_study


def study(tmp_path: Path, text: str, name: str = "study.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_study(path)


def runs(s) -> int:
    return len(make_plan(s).runs)


def test_single_dimension(tmp_path):
    s = study(
        tmp_path,
        """
name: dtype-sweep
model: gpt2
engine: transformers
dataset:
  n_prompts: 100
sweep:
  dtype: [float16, bfloat16]
study_execution:
  n_cycles: 3
  experiment_order: shuffle
""",
    )
    assert (len(s.experiments), runs(s)) == (2, 6)


def test_multi_dimension(tmp_path):
    s = study(
        tmp_path,
        """
name: dtype-n-sweep
model: gpt2
engine: transformers
sweep:
  dtype: [float16, bfloat16]
  dataset.n_prompts: [50, 100]
study_execution:
  n_cycles: 3
  experiment_order: shuffle
""",
    )
    assert (len(s.experiments), runs(s)) == (4, 12)
    assert {(e.config.dtype, e.config.dataset.n_prompts) for e in s.experiments} == {
        ("float16", 50),
        ("float16", 100),
        ("bfloat16", 50),
        ("bfloat16", 100),
    }


def test_engine_scoped_two_segments(tmp_path):
    s = study(
        tmp_path,
        """
name: batch-size-sweep
model: gpt2
engine: transformers
sweep:
  pytorch.batch_size: [1, 2, 4, 8]
study_execution:
  n_cycles: 3
  experiment_order: shuffle
""",
    )
    assert (len(s.experiments), runs(s)) == (4, 12)
    assert [e.config.pytorch.batch_size for e in s.experiments] == [1, 2, 4, 8]
    assert {e.config.engine for e in s.experiments} == {"pytorch"}


def test_engine_scoped_three_segments(tmp_path):
    s = study(
        tmp_path,
        """
name: kv-cache-sweep
model: gpt2
engine: vllm
sweep:
  vllm.engine.block_size: [8, 16, 32]
  vllm.engine.kv_cache_dtype: [auto, fp8]
runners:
  vllm: docker
study_execution:
  n_cycles: 3
""",
    )
    assert (len(s.experiments), runs(s)) == (6, 18)
    assert s.experiments[0].config.vllm.engine.block_size == 8


def test_nested_dotted_path(tmp_path):
    s = study(
        tmp_path,
        """
name: dataset-size-sweep
model: gpt2
engine: transformers
sweep:
  dataset.n_prompts: [50, 100, 200]
study_execution:
  n_cycles: 3
""",
    )
    assert (len(s.experiments), runs(s)) == (3, 9)


def test_explicit_experiments(tmp_path):
    s = study(
        tmp_path,
        """
name: compare-engines
dataset:
  n_prompts: 50
experiments:
  - model: gpt2
    engine: transformers
    dtype: bfloat16
  - model: gpt2
    engine: vllm
runners:
  vllm: docker
study_execution:
  n_cycles: 3
  experiment_order: interleave
""",
    )
    assert (len(s.experiments), runs(s)) == (2, 6)
    assert all(e.config.dataset.n_prompts == 50 for e in s.experiments)
    assert [r.experiment.index for r in make_plan(s).runs] == [0, 1, 0, 1, 0, 1]


def test_base_inheritance(tmp_path):
    (tmp_path / "base-experiment.yaml").write_text("model: gpt2\nengine: transformers\nmax_output_tokens: 64\n")
    s = study(
        tmp_path,
        """
name: dtype-sweep
base: base-experiment.yaml
sweep:
  dtype: [float32, float16, bfloat16]
study_execution:
  n_cycles: 3
""",
    )
    assert (len(s.experiments), runs(s)) == (3, 9)
    assert {e.config.max_output_tokens for e in s.experiments} == {64}


def test_mixed_sweep_and_explicit(tmp_path):
    s = study(
        tmp_path,
        """
name: mixed-study
model: gpt2
sweep:
  dtype: [float16, bfloat16]
experiments:
  - model: gpt2
    engine: transformers
    dtype: float32
    transformers:
      load_in_4bit: true
study_execution:
  n_cycles: 3
  experiment_order: shuffle
""",
    )
    assert len(s.experiments) == 3
    assert s.experiments[-1].config.pytorch.load_in_4bit is True


def test_dependent_group_compilation(tmp_path):
    s = study(
        tmp_path,
        """
name: compile-sweep
model: gpt2
engine: transformers
sweep:
  dtype: [float16, bfloat16]
  pytorch.compilation:
    - pytorch.torch_compile: false
    - pytorch.torch_compile: true
      pytorch.torch_compile_mode: default
    - pytorch.torch_compile: true
      pytorch.torch_compile_mode: max-autotune
""",
    )
    assert len(s.experiments) == 6
    modes = [
        (e.config.dtype, e.config.pytorch.torch_compile, e.config.pytorch.torch_compile_mode) for e in s.experiments
    ]
    assert modes[:3] == [("float16", False, None), ("float16", True, "default"), ("float16", True, "max-autotune")]


def test_baseline_variant(tmp_path):
    s = study(
        tmp_path,
        """
model: gpt2
engine: pytorch
sweep:
  pytorch.quantization:
    - {}
    - pytorch.load_in_8bit: true
    - pytorch.load_in_4bit: true
      pytorch.bnb_4bit_quant_type: nf4
""",
    )
    assert len(s.experiments) == 3
    assert s.experiments[0].config.pytorch is None


def test_mini_grid_within_an_entry(tmp_path):
    s = study(
        tmp_path,
        """
model: gpt2
engine: pytorch
sweep:
  pytorch.caching:
    - {}
    - pytorch.use_cache: true
      pytorch.cache_implementation: [static, offloaded_static, sliding_window]
""",
    )
    assert len(s.experiments) == 4
    assert [e.config.pytorch.cache_implementation for e in s.experiments[1:]] == [
        "static",
        "offloaded_static",
        "sliding_window",
    ]


def test_cross_section_override(tmp_path):
    s = study(
        tmp_path,
        """
model: gpt2
engine: pytorch
sweep:
  pytorch.decoding:
    - {}
    - decoder.do_sample: false
      decoder.temperature: 0.0
      pytorch.num_beams: 4
      pytorch.early_stopping: true
""",
    )
    assert len(s.experiments) == 2
    beam = s.experiments[1].config
    assert (beam.decoder.do_sample, beam.pytorch.num_beams, beam.decoding_mode()) == (False, 4, "beam")


def test_yaml_anchors_and_merge_keys(tmp_path):
    s = study(
        tmp_path,
        """
model: gpt2
engine: tensorrt
tensorrt: {engine: tensorrt}   # quantisation is a build setting of a compiled engine
sweep:
  tensorrt.quant_config:
    - {}
    - &trt_int8
      tensorrt.quant_config.quant_algo: INT8
    - <<: *trt_int8
      tensorrt.quant_config.kv_cache_quant_algo: INT8
    - tensorrt.quant_config.quant_algo: W4A16_AWQ
""",
    )
    assert len(s.experiments) == 4
    quant = [e.config.tensorrt.quant if e.config.tensorrt else None for e in s.experiments]
    assert quant[2].quant_algo == "INT8"
    assert quant[2].kv_cache_quant_algo == "INT8"


def test_multiple_groups_crossed(tmp_path):
    s = study(
        tmp_path,
        """
model: gpt2
engine: pytorch
sweep:
  dtype: [float16, bfloat16]
  pytorch.compilation:
    - pytorch.torch_compile: false
    - pytorch.torch_compile: true
      pytorch.torch_compile_mode: default
  pytorch.quantization:
    - {}
    - pytorch.load_in_8bit: true
    - pytorch.load_in_4bit: true
      pytorch.bnb_4bit_quant_type: nf4
""",
    )
    assert len(s.experiments) == 12


def test_engine_scoped_groups_apply_to_their_engine_only(tmp_path):
    s = study(
        tmp_path,
        """
model: gpt2
engine: [transformers, vllm]
sweep:
  dtype: [float16, bfloat16]
  transformers.compilation:
    - pytorch.torch_compile: false
    - pytorch.torch_compile: true
      pytorch.torch_compile_mode: default
  vllm.engine.max_num_seqs: [64, 256]
""",
    )
    engines = [e.config.engine for e in s.experiments]
    assert engines.count("pytorch") == 4
    assert engines.count("vllm") == 4


def test_group_name_must_not_equal_an_axis_key(tmp_path):
    with pytest.raises(ConfigError, match="group name must not equal an axis key"):
        study(
            tmp_path,
            """
model: gpt2
engine: pytorch
sweep:
  transformers.batch_size: [1, 2]
  pytorch.batch_size:
    - pytorch.batch_size: 4
""",
        )


def test_mixing_scalars_and_mappings_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"only scalars \(an axis\) or only mappings \(a group\)"):
        study(tmp_path, "model: gpt2\nsweep:\n  dtype: [float16, {pytorch.batch_size: 2}]\n")


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("sequential", "AAABBB"),
        ("interleave", "ABABAB"),
        ("reverse", "ABBAAB"),
    ],
)
def test_experiment_order_table(tmp_path, order, expected):
    s = study(
        tmp_path,
        "model: gpt2\nsweep:\n  dtype: [float16, bfloat16]\n"
        f"study_execution: {{n_cycles: 3, experiment_order: {order}}}\n",
    )
    assert "".join("AB"[r.experiment.index] for r in make_plan(s).runs) == expected


def test_runners_docker_image_and_bad_runner(tmp_path):
    s = study(tmp_path, "model: gpt2\nrunners:\n  transformers: docker:my/registry:tag\n")
    assert s.images == {"pytorch": "my/registry:tag"}
    assert study(tmp_path, "model: gpt2\nrunners:\n  pytorch: local\n", "b.yaml").runners == {"pytorch": "local"}
    with pytest.raises(ConfigError, match="expected docker, docker:<image> or local"):
        study(tmp_path, "model: gpt2\nrunners:\n  pytorch: slurm\n", "c.yaml")
