"""cold_start (002): the load and a first request measured as a window of their own, beside the
warm window. The seam is the engine (DummyEngine) and the meter's external sampler, a fake
energy counter the engine drives: loading costs 40 J, each prompt generated 1 J."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llem_agent.coldstart import download_note, measure_cold_start
from llem_agent.contract import ExperimentConfig, RunRequest, config_hash
from llem_agent.energy import EnergyMeter, WindowWork
from llem_agent.energy.external import ExternalEnergy
from llem_agent.measure import run_measurement
from llem_agent.metrics import BatchObservation
from tests.unit.test_measure import DummyEngine, no_nvml

LOAD_J, PROMPT_J = 40.0, 1.0
WORK = WindowWork(output_tokens=4, input_tokens=6, n_requests=2, batch_spans=[(0.0, 0.01, 0.05)])


class Counter:
    """The joules the fake machine has used so far."""

    def __init__(self) -> None:
        self.joules = 0.0


class CountingSampler:
    """An external sampler reading the counter (as Zeus reads a GPU's), one window at a time."""

    name = "zeus"
    polls_gpu = False

    def __init__(self, counter: Counter, single_window: bool = False) -> None:
        self.counter, self.single_window = counter, single_window
        self.windows = 0
        self._start = 0.0

    def start(self) -> None:
        self.windows += 1
        self._start = self.counter.joules

    def stop(self) -> ExternalEnergy:
        return ExternalEnergy(energy_j=self.counter.joules - self._start, version="fake")


class PoweredEngine(DummyEngine):
    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def load(self, config: Any, model_source: str, adapter_source: Any = None, dirs: Any = None) -> None:
        super().load(config, model_source, adapter_source, dirs)
        self.counter.joules += LOAD_J

    def generate(self, prompts: list[str]) -> BatchObservation:
        self.counter.joules += PROMPT_J * len(prompts)
        return super().generate(prompts)


def meter_with(sampler: CountingSampler) -> EnergyMeter:
    return EnergyMeter(no_nvml, external_factory=lambda indices: sampler).open()


def request(**fields: Any) -> RunRequest:
    cfg = ExperimentConfig.model_validate(
        {
            "model": "m",
            "dataset": {"source": "builtin", "n_prompts": 10},
            "warmup": {"n_warmup": 5},
            "pytorch": {"batch_size": 4},
            **fields,
        }
    )
    return RunRequest(run_id="r", study_name="s", cycle=1, config_hash=config_hash(cfg), config=cfg, model_path="/m")


def test_the_cold_window_holds_the_load_and_one_first_request():
    counter = Counter()
    sampler = CountingSampler(counter)
    engine = PoweredEngine(counter)
    ticks = iter([10.0, 12.5, 12.75, 13.0])  # started, loaded, first request sent, done

    def load() -> DummyEngine:
        engine.load(request().config, "/m")
        return engine

    loaded, cold = measure_cold_start(meter_with(sampler), load, "hello", clock=lambda: next(ticks))
    assert loaded is engine and engine.calls == [["hello"]]  # the first prompt, alone
    assert cold.load_s == 2.5 and cold.first_request_s == 0.5
    assert cold.first_ttft_s == 0.01  # DummyEngine's first token, 10 ms into the generate call
    assert cold.time_to_first_token_s == pytest.approx(12.75 - 10.0 + 0.01)  # 2.76 s from the start of loading
    assert cold.ttft_missing_reason is None
    assert cold.energy.energy_j == LOAD_J + PROMPT_J == 41.0 and cold.energy.source == "zeus"
    assert cold.energy.j_per_output_token is None and cold.energy.j_per_request is None  # the work is loading
    assert cold.energy.prefill_decode_note == "not split: the cold start window is loading and one first request"


def test_a_run_reports_the_cold_start_beside_the_warm_window():
    counter = Counter()
    sampler = CountingSampler(counter)
    engine = PoweredEngine(counter)
    phases: list[str] = []
    result = run_measurement(request(cold_start=True), lambda name: engine, meter_with(sampler), phases.append)
    assert phases == ["baseline", "load", "warmup", "measure", "report"]
    # first request alone, warm-up's 2 batches of 4 (n_warmup 5), then 10 measured prompts in 4 + 4 + 2
    assert [len(batch) for batch in engine.calls] == [1, 4, 4, 4, 4, 2]
    assert engine.calls[0] == engine.calls[1][:1]  # the first warm-up prompt, never a measured one
    assert sampler.windows == 2
    assert result.cold_start is not None
    assert result.cold_start.energy.energy_j == 41.0  # 40 J load + 1 J first request
    assert result.energy.energy_j == 10.0  # 10 measured prompts; warm-up's 8 J fall in neither window
    assert result.n_requests == 10 and result.cold_start.first_ttft_s == 0.01
    assert result.cold_start.load_s >= 0 and result.cold_start.first_request_s >= 0
    assert result.cold_start.note is not None and "/m was not found locally" in result.cold_start.note


def test_off_by_default_measures_one_window_and_keeps_the_config_hash():
    counter = Counter()
    sampler = CountingSampler(counter)
    engine = PoweredEngine(counter)
    result = run_measurement(request(), lambda name: engine, meter_with(sampler), lambda phase: None)
    assert result.cold_start is None and sampler.windows == 1
    assert [len(batch) for batch in engine.calls] == [4, 4, 4, 4, 2]
    off, on = request(cold_start=False).config, request(cold_start=True).config
    assert config_hash(off) == config_hash(request().config)  # as before cold_start existed
    assert config_hash(on) != config_hash(off)
    assert "cold_start" not in result.model_dump(exclude_none=True)


def test_a_meter_that_measures_one_window_leaves_the_cold_energy_null_with_the_reason():
    counter = Counter()
    sampler = CountingSampler(counter, single_window=True)  # CodeCarbon's tracker
    engine = PoweredEngine(counter)
    result = run_measurement(request(cold_start=True), lambda name: engine, meter_with(sampler), lambda phase: None)
    assert result.cold_start is not None
    assert result.cold_start.energy.energy_j is None
    assert result.cold_start.energy.unavailable_reason == (
        "not measured: zeus measures one window per run, kept for the measured one"
    )
    assert result.cold_start.first_ttft_s == 0.01  # the times are still taken
    assert sampler.windows == 1 and result.energy.energy_j == 10.0


def test_an_untimed_first_request_says_why():
    class Beams(DummyEngine):
        def generate(self, prompts: list[str]) -> BatchObservation:
            self.calls.append(prompts)
            return BatchObservation([3], [2], [[]], untimed_end_s=0.2, untimed_reason="beam search reports no times")

    engine = Beams()
    engine.config = request().config
    _, cold = measure_cold_start(EnergyMeter(no_nvml).open(), lambda: engine, "hi")
    assert cold.first_ttft_s is None and cold.time_to_first_token_s is None
    assert cold.ttft_missing_reason == "beam search reports no times"
    assert cold.energy.energy_j is None and cold.energy.unavailable_reason == "no GPU here"  # NVML's own reason


def test_the_download_note_only_when_the_model_is_not_local(tmp_path: Path):
    assert download_note(str(tmp_path), Path) is None
    assert download_note("org/m", lambda source: None) == (
        "org/m was not found locally or in the Hugging Face cache: the load includes downloading it"
    )


def test_the_pytorch_engine_cold_starts_the_tiny_model_on_the_cpu(tmp_path: Path):
    pytest.importorskip("torch")
    from llem_agent.engines import load_engine
    from llem_agent.tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    cfg = ExperimentConfig.model_validate(
        {
            "model": str(model),
            "cold_start": True,
            "max_output_tokens": 4,
            "dataset": {"source": "builtin", "n_prompts": 2},
            "warmup": {"n_warmup": 1},
            "baseline": {"enabled": False},
        }
    )
    req = RunRequest(run_id="r", study_name="s", cycle=1, config_hash=config_hash(cfg), config=cfg)
    result = run_measurement(req, load_engine, EnergyMeter(no_nvml).open(), lambda phase: None)
    cold = result.cold_start
    assert cold is not None and cold.note is None  # a local directory: nothing to download
    assert cold.load_s > 0 and cold.first_request_s > 0
    assert cold.first_ttft_s is not None and 0 < cold.first_ttft_s <= cold.first_request_s
    assert cold.time_to_first_token_s is not None and cold.time_to_first_token_s > cold.load_s
    assert cold.energy.energy_j is None and cold.energy.unavailable_reason == "no GPU here"
    assert result.n_requests == 2 and result.output_tokens > 0


def test_nvml_brackets_the_load_and_the_warm_window_keeps_the_trace():
    import time

    from tests.unit.test_energy import ReplayNvml

    fake = ReplayNvml(["L4"], 70.0)  # a counter rising at 70 W
    meter = EnergyMeter(lambda: fake, interval_s=0.01).open()
    engine = DummyEngine()

    def load() -> DummyEngine:
        engine.load(request().config, "/m")
        time.sleep(0.2)
        return engine

    _, cold = measure_cold_start(meter, load, "hi")
    assert cold.energy.source == "nvml_total_energy"
    assert cold.energy.mean_power_w == pytest.approx(70.0, rel=0.15)  # energy / window: the device's power
    assert cold.energy.energy_j is not None and cold.energy.energy_j == pytest.approx(70.0 * 0.2, rel=0.5)
    cold_end = meter.window.end
    meter.start()
    time.sleep(0.05)
    warm = meter.stop(WORK)
    meter.close()
    assert warm.energy_j is not None and warm.energy_j < cold.energy.energy_j  # its own window, not the sum
    assert meter.window.start > cold_end and meter.samples
    assert all(s.time_s >= cold_end for s in meter.samples)


@pytest.mark.parametrize("engine", ["pytorch", "vllm", "tensorrt"])
def test_every_engine_takes_cold_start_through_the_engine_protocol(engine: str):
    from llem_agent.contract import unsupported_by_agent

    cfg = ExperimentConfig.model_validate({"model": "m", "engine": engine, "cold_start": True})
    assert cfg.cold_start is True and unsupported_by_agent(cfg, engine) == []


@pytest.mark.parametrize("value", [1, "yes", {"enabled": True}])
def test_cold_start_is_a_boolean(value: object):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="cold_start"):
        ExperimentConfig.model_validate({"model": "m", "cold_start": value})
