"""Builders for contract objects, shared by tests that need a plausible result."""

from __future__ import annotations

from llem_agent.contract import (
    AgentEnvironment,
    EnergyReport,
    ExperimentResult,
    Memory,
    PhaseTimings,
)
from llem_agent.metrics import BatchObservation, latency, request_records, throughput


def make_result(run_id: str, config_hash: str = "0" * 16, window_s: float = 1.0) -> ExperimentResult:
    records = request_records(
        [BatchObservation(input_tokens=[5, 7], output_tokens=[3, 2], token_times_s=[[0.1, 0.2, 0.3], [0.1, 0.25]])]
    )
    return ExperimentResult(
        run_id=run_id,
        config_hash=config_hash,
        engine="pytorch",
        model="m",
        effective={"device": "cpu"},
        n_requests=len(records),
        n_batches=1,
        input_tokens=12,
        output_tokens=5,
        timings=PhaseTimings(load_s=0.5, warmup_s=0.1, measure_s=window_s),
        throughput=throughput(records, window_s),
        latency=latency(records),
        energy=EnergyReport(energy_j=None, source=None, unavailable_reason="no GPU"),
        memory=Memory(peak_device_mb=None, peak_host_rss_mb=100.0),
        environment=AgentEnvironment(
            python="3.11",
            engine_version="x",
            torch_version=None,
            transformers_version=None,
            device="cpu",
            device_names=[],
        ),
        requests=records,
    )
