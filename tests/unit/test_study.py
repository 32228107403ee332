from pathlib import Path

import pytest

from llem.errors import ConfigError
from llem.study import load_study


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_single_experiment_file_is_one_experiment(tmp_path):
    study = load_study(write(tmp_path, "model: gpt2\nengine: transformers\n", "exp.yaml"))
    assert len(study.experiments) == 1
    assert study.experiments[0].config.engine == "pytorch"
    assert study.name == "exp"


def test_study_with_sweep_experiments_and_execution(tmp_path):
    text = """
name: my-study
model: gpt2
engine: pytorch
sweep:
  pytorch.batch_size: [1, 2]
experiments:
  - dtype: float16
study_execution:
  n_cycles: 2
  experiment_order: interleave
"""
    study = load_study(write(tmp_path, text))
    assert study.name == "my-study"
    assert [e.config.pytorch.batch_size if e.config.pytorch else None for e in study.experiments] == [1, 2, None]
    assert study.execution.n_cycles == 2
    assert len(study.design_hash) == 16


def test_design_hash_ignores_study_execution(tmp_path):
    a = load_study(write(tmp_path, "model: m\nsweep: {dtype: [float16]}\nstudy_execution: {n_cycles: 1}\n", "a.yaml"))
    b = load_study(write(tmp_path, "model: m\nsweep: {dtype: [float16]}\nstudy_execution: {n_cycles: 5}\n", "b.yaml"))
    c = load_study(write(tmp_path, "model: m\nsweep: {dtype: [bfloat16]}\n", "c.yaml"))
    assert a.design_hash == b.design_hash != c.design_hash


def test_invalid_grid_points_are_skipped_with_reason(tmp_path):
    study = load_study(write(tmp_path, "model: m\nsweep:\n  pytorch.batch_size: [0, 2]\n"))
    assert len(study.experiments) == 1
    assert len(study.skipped) == 1
    assert "batch_size" in study.skipped[0].reason


def test_nothing_valid_left_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no valid experiment"):
        load_study(write(tmp_path, "model: m\nsweep:\n  pytorch.batch_size: [0, -1]\n"))


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'bach_size' in 'pytorch' \(did you mean 'batch_size'\?\)"):
        load_study(write(tmp_path, "model: m\npytorch:\n  bach_size: 2\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'sweeep' \(did you mean 'sweep'\?\)"):
        load_study(write(tmp_path, "model: m\nsweeep:\n  dtype: [float16]\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: [unclosed\n", "YAML syntax error at line"),
        ("- a\n- b\n", "expected a mapping"),
        ("engine: pytorch\n", "missing required key 'model'"),
        ("model: m\nstudy_execution: {n_cycle: 2}\n", "did you mean 'n_cycles'"),
        ("model: m\nname: ../escape\nsweep: {dtype: [float16]}\n", "name '../escape' must be"),
    ],
)
def test_bad_files_give_one_clear_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_study(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")


def test_base_is_resolved_relative_to_study_and_study_keys_are_stripped(tmp_path):
    (tmp_path / "sub").mkdir()
    write(
        tmp_path / "sub", "model: base-model\ndtype: float32\nsweep: {dtype: [float16]}\nname: ignored\n", "base.yaml"
    )
    study = load_study(write(tmp_path / "sub", "base: base.yaml\nname: s\nsweep:\n  pytorch.batch_size: [1, 2]\n"))
    assert {e.config.model for e in study.experiments} == {"base-model"}
    assert {e.config.dtype for e in study.experiments} == {"float32"}
    assert len(study.experiments) == 2
