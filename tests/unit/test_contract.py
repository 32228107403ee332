import pytest
from pydantic import ValidationError

from llem_agent.contract import ExperimentConfig, RunRequest, config_hash


def test_transformers_is_an_alias_for_pytorch_engine_and_section():
    cfg = ExperimentConfig.model_validate({"model": "m", "engine": "transformers", "transformers": {"batch_size": 4}})
    assert cfg.engine == "pytorch"
    assert cfg.pytorch is not None and cfg.pytorch.batch_size == 4


def test_engine_section_must_match_engine():
    with pytest.raises(ValidationError, match="'pytorch:' section given but engine is 'vllm'"):
        ExperimentConfig.model_validate({"model": "m", "engine": "vllm", "pytorch": {"batch_size": 2}})


def test_unknown_keys_are_rejected_at_every_level():
    with pytest.raises(ValidationError, match="extra"):
        ExperimentConfig.model_validate({"model": "m", "pytorch": {"bach_size": 2}})
    with pytest.raises(ValidationError, match="extra"):
        ExperimentConfig.model_validate({"model": "m", "modle": "x"})


def test_config_hash_is_16_hex_stable_and_ignores_unset_engine_defaults():
    a = ExperimentConfig.model_validate({"model": "m"})
    b = ExperimentConfig.model_validate({"model": "m", "pytorch": None})
    c = ExperimentConfig.model_validate({"model": "m", "pytorch": {"batch_size": 2}})
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(c)


def test_config_hash_changes_with_any_explicit_value():
    base = {"model": "m", "dataset": {"n_prompts": 10}}
    other = {"model": "m", "dataset": {"n_prompts": 11}}
    assert config_hash(ExperimentConfig.model_validate(base)) != config_hash(ExperimentConfig.model_validate(other))


def test_run_request_round_trips_through_json():
    cfg = ExperimentConfig.model_validate({"model": "m", "pytorch": {"batch_size": 3}})
    req = RunRequest(run_id="e001-c1", study_name="s", cycle=1, config_hash=config_hash(cfg), config=cfg)
    again = RunRequest.model_validate_json(req.model_dump_json())
    assert again == req
    assert again.kind == "llem.run_request"


def test_greedy_when_sampling_off_or_temperature_zero():
    assert ExperimentConfig.model_validate({"model": "m", "decoder": {"do_sample": False}}).decoder.greedy
    assert ExperimentConfig.model_validate({"model": "m", "decoder": {"temperature": 0}}).decoder.greedy
    assert not ExperimentConfig.model_validate({"model": "m"}).decoder.greedy


def test_contract_fingerprint_follows_shape_not_prose():
    from pydantic import BaseModel, Field

    from llem_agent.contract import contract_fingerprint
    from llem_agent.contract.fingerprint import _shape

    class A(BaseModel):
        x: int
        y: str | None = None

    class B(BaseModel):  # same shape, other prose and defaults
        x: int = Field(description="documented")
        y: str | None = "default"

    class C(BaseModel):  # one more field
        x: int
        y: str | None = None
        z: float = 0.0

    shape_a, shape_b, shape_c = (_shape(m, set()) for m in (A, B, C))
    assert shape_a["fields"] == shape_b["fields"]
    assert shape_a["fields"] != shape_c["fields"]
    fingerprint = contract_fingerprint()
    assert len(fingerprint) == 16 and fingerprint == contract_fingerprint()
