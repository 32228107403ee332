"""The engine-agnostic measurement loop through a DummyEngine seam (no torch needed)."""

from llem_agent.contract import AgentEnvironment, ExperimentConfig, RunRequest, config_hash
from llem_agent.energy import EnergyMeter, NvmlUnavailable
from llem_agent.measure import batches, run_measurement
from llem_agent.metrics import BatchObservation


class DummyEngine:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.loaded_from: str | None = None

    def load(self, config, model_source, adapter_source=None, dirs=None):
        self.config, self.loaded_from = config, model_source

    def batch_size(self):
        return self.config.pytorch.batch_size

    def prepare(self, prompts):
        return list(prompts)

    def generate(self, prompts):
        self.calls.append(prompts)
        n = len(prompts)
        return BatchObservation([3] * n, [2] * n, [[0.01, 0.02]] * n)

    def synchronize(self):
        pass

    def prefix_cache(self):
        return False

    def passthrough(self):
        return {}

    def reset_prefix_cache(self):
        return False

    def effective(self):
        return {"device": "cpu", "batch_size": self.batch_size()}

    def n_parameters(self):
        return 1000

    def peak_device_memory_mb(self):
        return None

    def environment(self):
        return AgentEnvironment(
            python="3", engine_version="0", torch_version=None, transformers_version=None, device="cpu", device_names=[]
        )


def no_nvml():
    raise NvmlUnavailable("no GPU here")


def test_warmup_uses_full_batches_and_measurement_covers_every_prompt():
    cfg = ExperimentConfig.model_validate(
        {
            "model": "m",
            "dataset": {"source": "builtin", "n_prompts": 10},
            "warmup": {"n_warmup": 5},
            "pytorch": {"batch_size": 4},
        }
    )
    req = RunRequest(
        run_id="r", study_name="s", cycle=1, config_hash=config_hash(cfg), config=cfg, model_path="/llem/model"
    )
    engine = DummyEngine()
    phases: list[str] = []
    result = run_measurement(req, lambda name: engine, EnergyMeter(no_nvml).open(), phases.append)
    assert phases == ["baseline", "load", "warmup", "measure", "report"]
    assert result.energy.baseline_note == "no baseline: no GPU here"
    assert engine.loaded_from == "/llem/model"
    warm, measured = engine.calls[:2], engine.calls[2:]
    assert [len(b) for b in warm] == [4, 4]
    assert [len(b) for b in measured] == [4, 4, 2]
    assert result.n_requests == 10 and result.output_tokens == 20 and result.input_tokens == 30
    assert result.energy.energy_j is None and result.energy.unavailable_reason == "no GPU here"
    assert result.throughput.output_tokens_per_s > 0
    assert result.config_hash == config_hash(cfg)
    assert result.flops_estimate == 2 * 1000 * (20 + 30)


def test_batching_helper():
    assert batches(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]


def test_a_run_given_gpus_refuses_to_fall_back_to_cpu():
    import pytest

    from llem_agent.measure import GpuNotVisible

    cfg = ExperimentConfig.model_validate({"model": "m", "dataset": {"source": "builtin", "n_prompts": 2}})
    req = RunRequest(run_id="r", study_name="s", cycle=1, config_hash=config_hash(cfg), config=cfg, gpus=["0"])
    engine = DummyEngine()
    engine.batch_size = lambda: 1  # no pytorch section in this config
    with pytest.raises(GpuNotVisible, match=r"GPUs \['0'\] but the engine sees none"):
        run_measurement(req, lambda name: engine, EnergyMeter(no_nvml).open(), lambda phase: None)
