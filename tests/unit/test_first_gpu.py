"""The second GPU-path review ("Right on the first GPU"): each finding at its seam, as a test
that failed before its fix. Numbers are worked out by hand in the comments."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from llem_agent.contract import (
    DatasetConfig,
    ExperimentConfig,
    ExperimentResult,
    RunRequest,
    WarmupConfig,
    config_hash,
)
from llem_agent.energy import EnergyMeter
from llem_agent.heartbeat import Heartbeat
from llem_agent.measure import run_measurement
from llem_agent.metrics import BEAM_SEARCH_UNTIMED, BatchObservation, latency, request_records, untimed_reasons
from llem_agent.prompts import load_prompt_sets
from orchestrator.launcher import Liveness
from tests.unit.test_measure import DummyEngine, no_nvml

# --- 6. beam search invents no latencies -------------------------------------------------


def beam_batch() -> BatchObservation:
    """Two requests of a beam-search batch that returned after 1.5 s, 6 and 4 tokens, no times."""
    return BatchObservation(
        input_tokens=[5, 7],
        output_tokens=[6, 4],
        token_times_s=[[], []],
        complete=False,
        untimed_end_s=1.5,
        untimed_reason=BEAM_SEARCH_UNTIMED,
    )


def test_beam_search_requests_are_untimed_not_stamped_at_the_batch_end():
    records = request_records([beam_batch()])
    assert [r.ttft_s for r in records] == [None, None]  # was 1.5 = e2e
    assert [r.e2e_latency_s for r in records] == [1.5, 1.5]
    lat = latency(records, untimed_reasons([beam_batch()]))
    assert lat.ttft_s.n == 0 and lat.inter_token_s.n == 0  # was 10 gaps of 0 s
    assert lat.e2e_s.p50 == pytest.approx(1.5)
    assert lat.ttft_missing_reason is not None
    assert "2 of 2" in lat.ttft_missing_reason and "beam search" in lat.ttft_missing_reason


def test_untimed_reasons_name_each_cause_once():
    timed = BatchObservation([3], [2], [[0.1, 0.2]])
    no_metrics = BatchObservation([3, 3], [2, 2], [[0.1, 0.3], []], complete=False, untimed_end_s=0.5)
    reasons = untimed_reasons([timed, beam_batch(), no_metrics, beam_batch()])
    assert reasons == [BEAM_SEARCH_UNTIMED, "the engine returned no request metrics for them"]
    assert untimed_reasons([timed]) == []


# --- 1. no prefix-cache hit inside the measured window -----------------------------------


class PrefixCachingEngine(DummyEngine):
    """Caches like vLLM's prefix caching: a prompt seen before is served from the cache (all
    its 3 prompt tokens, as DummyEngine counts them) until the cache is reset."""

    def __init__(self, resettable: bool = True) -> None:
        super().__init__()
        self.cache: set[str] = set()
        self.resettable = resettable
        self.resets = 0

    def generate(self, prompts):
        observation = super().generate(prompts)
        hits = [3 if p in self.cache else 0 for p in prompts]
        self.cache.update(prompts)
        return BatchObservation(
            observation.input_tokens, observation.output_tokens, observation.token_times_s, cached_tokens=hits
        )

    def prefix_cache(self):
        return True

    def reset_prefix_cache(self):
        if self.resettable:
            self.cache.clear()
            self.resets += 1
        return self.resettable


def measure(engine: DummyEngine, **warmup: object) -> ExperimentResult:
    cfg = ExperimentConfig.model_validate(
        {"model": "m", "dataset": {"source": "builtin", "n_prompts": 8}, "warmup": {"n_warmup": 8, **warmup},
         "pytorch": {"batch_size": 4}}
    )  # fmt: skip
    req = RunRequest(run_id="r", study_name="s", cycle=1, config_hash=config_hash(cfg), config=cfg)
    return run_measurement(req, lambda name: engine, EnergyMeter(no_nvml).open(), lambda phase: None)


def test_warm_up_shares_no_prompt_with_the_window_and_the_cache_is_emptied():
    engine = PrefixCachingEngine()
    result = measure(engine)
    warm, measured = engine.calls[:2], engine.calls[2:]
    assert not {p for b in warm for p in b} & {p for b in measured for p in b}  # was: the same 8 prompts
    assert engine.resets == 1
    assert [r.cached_prompt_tokens for r in result.requests] == [0] * 8
    cache = result.prefix_cache
    assert cache is not None and (cache.mode, cache.warmup_prompts, cache.reset_after_warmup) == (
        "cold", "held_out", True
    )  # fmt: skip
    assert (cache.prompt_tokens, cache.cached_prompt_tokens, cache.requests_with_cached_tokens) == (24, 0, 0)
    assert result.warmup is not None and result.warmup.prompt_source == "held_out"
    assert not [f for f in result.energy.flags if f.code.startswith("prefix_cache")]


def test_a_cold_window_served_from_a_cache_anyway_is_flagged():
    # An engine that cannot be emptied, on a dataset whose measured prompts all repeat one text:
    # the window's first batch of 4 caches it, the second batch's 4 requests hit (3 tokens each).
    engine = PrefixCachingEngine(resettable=False)
    original = engine.generate
    engine.generate = lambda prompts: original(["same"] * len(prompts)) if len(engine.calls) >= 2 else original(prompts)
    result = measure(engine)
    assert result.prefix_cache is not None and result.prefix_cache.reset_after_warmup is False
    assert result.prefix_cache.cached_prompt_tokens == 4 * 3
    (flag,) = [f for f in result.energy.flags if f.code == "prefix_cache_hit"]
    assert "4 of 8 measured requests" in flag.message and "12 of 24 prompt tokens" in flag.message


def test_a_warm_cache_asked_for_is_served_and_labelled():
    engine = PrefixCachingEngine()
    result = measure(engine, prefix_cache="warm")
    assert engine.resets == 0
    assert engine.calls[:2] == engine.calls[2:]  # warm-up ran the measured prompts themselves
    assert result.prefix_cache is not None and result.prefix_cache.mode == "warm"
    assert result.prefix_cache.cached_prompt_tokens == 24 and result.prefix_cache.requests_with_cached_tokens == 8
    (flag,) = [f for f in result.energy.flags if f.code.startswith("prefix_cache")]
    assert flag.code == "prefix_cache_warm" and "24 of 24 prompt tokens" in flag.message


def test_a_source_with_no_prompt_to_spare_warms_up_on_marked_copies(tmp_path: Path):
    (tmp_path / "p.jsonl").write_text("".join(f'{{"prompt": "question {i}"}}\n' for i in range(4)))
    sets = load_prompt_sets(DatasetConfig(source="p.jsonl", n_prompts=4), 0, tmp_path)
    assert sets.warmup_source == "marked" and sets.measured == [f"question {i}" for i in range(4)]
    assert sets.warmup == [f"[llem warm-up {i}] question {i}" for i in range(4)]
    # No warm-up prompt starts like a measured one: the first token block of each differs.
    assert not any(w.startswith(m[:5]) for w in sets.warmup for m in sets.measured)


def test_built_in_and_jsonl_sources_split_alike(tmp_path: Path):
    (tmp_path / "p.jsonl").write_text("".join(f'"p{i}"\n' for i in range(10)))
    sets = load_prompt_sets(DatasetConfig(source="p.jsonl", n_prompts=6, order="shuffled"), 3, tmp_path)
    assert sorted(sets.measured) == [f"p{i}" for i in range(6)]  # the first six, shuffled
    assert sets.warmup == ["p6", "p7", "p8", "p9"] and sets.warmup_source == "held_out"
    builtin = load_prompt_sets(DatasetConfig(source="builtin", n_prompts=150), 0)
    assert len(builtin.measured) == 150 and len(builtin.warmup) == 50  # 200 in the set
    assert not set(builtin.measured) & set(builtin.warmup)


# --- 11. long waits are not killed as hung ------------------------------------------------


def test_the_thermal_floor_is_bounded():
    assert WarmupConfig(thermal_floor_seconds=600).thermal_floor_seconds == 600
    for bad in (601, float("inf"), float("nan")):
        with pytest.raises(ValidationError):
            WarmupConfig(thermal_floor_seconds=bad)


def test_warm_up_beats_in_the_background_the_window_only_on_progress(tmp_path: Path):
    path = tmp_path / "heartbeat"
    with Heartbeat(path, interval_s=0.05) as beat:
        beat.phase("warmup")  # a first batch compiling, then the thermal floor: silent for minutes
        first = path.stat().st_mtime_ns
        time.sleep(0.3)
        assert path.stat().st_mtime_ns > first  # was: silent, so killed after the stall timeout
        beat.phase("measure")
        during = path.stat().st_mtime_ns
        time.sleep(0.3)
        assert path.stat().st_mtime_ns == during  # a hung window still goes stale


def test_a_batch_slower_than_the_stall_timeout_is_waited_for(tmp_path: Path):
    path = tmp_path / "heartbeat"
    beat = Heartbeat(path)
    beat.phase("measure")
    liveness = Liveness(path, stall_timeout_s=60.0)
    old = time.time() - 100  # last beat 100 s ago
    os.utime(path, (old, old))
    assert liveness.stale(started_at=old)
    beat.expect(40.0)  # warm-up's slowest batch took 40 s: the agent asks for 3 x 40 = 120 s
    os.utime(path, (old, old))
    assert json.loads(path.read_text())["patience_s"] == 120.0
    assert not liveness.stale(started_at=old)
    older = time.time() - 121
    os.utime(path, (older, older))
    assert liveness.stale(started_at=older)
