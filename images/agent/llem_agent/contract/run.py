"""The request the host hands one container: ``experiment.json`` in the run directory."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llem_agent.contract.config import ExperimentConfig

# Bumped whenever a change to the contract models would make an older agent misread a
# newer host (or the reverse).
CONTRACT_VERSION = "1"

# Paths inside the container; the host mounts to them, the agent reads from them.
CONTAINER_RUN_DIR = "/llem/run"
CONTAINER_MODEL_DIR = "/llem/model"
CONTAINER_HF_HOME = "/llem/hf-cache"
CONTAINER_BASELINE_DIR = "/llem/baseline-cache"
CONTAINER_ADAPTER_DIR = "/llem/adapter"
CONTAINER_ENGINE_CACHE = "/llem/engine-cache"  # TensorRT-LLM engine builds, kept across runs
CONTAINER_DATASET_DIR = "/llem/dataset"  # a local .jsonl prompt file, mounted read-only
CONTAINER_TRT_ENGINE_DIR = "/llem/trt-engine"  # a prebuilt TensorRT engine (tensorrt.engine_path), read-only
CONTAINER_SIMULATION_FILE = "/llem/simulated-gpus.json"  # --simulate-gpus: the simulation's description, read-only

EXPERIMENT_FILE = "experiment.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
HEARTBEAT_FILE = "heartbeat"  # the agent keeps it fresh; the host reads its age for liveness
TELEMETRY_FILE = "timeseries.parquet"  # 1 Hz GPU telemetry of the measured window
RAW_TRACE_ENV = "LLEM_NVML_TRACE"  # set: the agent also writes the window's raw NVML readings
RAW_TRACE_FILE = "nvml-trace.json"  # ... here (a replay fixture; make gpu-check keeps one)


class RunRequest(BaseModel):
    """One run of one experiment in one cycle, as the agent receives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["llem.run_request"] = "llem.run_request"
    contract_version: str = CONTRACT_VERSION
    run_id: str
    study_name: str
    cycle: int = Field(ge=1)
    config_hash: str
    config: ExperimentConfig
    gpus: list[str] = Field(default_factory=list, description="GPU ids the host gave this run; [] is CPU.")
    gpu_uuids: list[str] | None = Field(
        default=None,
        description="UUIDs of those GPUs ([] for a CPU run); the agent measures and checks exactly these. "
        "None (a standalone run): every GPU it sees.",
    )
    runner: Literal["docker", "local"] = Field(default="docker", description="How the host started the agent.")
    baseline_cache_dir: str | None = Field(default=None, description="Where cached idle baselines live.")
    sample_interval_s: float = Field(default=0.1, ge=0.001, le=10.0, description="NVML sampling interval (10 Hz).")
    model_path: str | None = Field(
        default=None,
        description="Where the model is mounted in the container; None: load config.model from the hub.",
    )
    adapter_path: str | None = Field(
        default=None,
        description="Where a local LoRA adapter is mounted; None: lora.adapter_id from the hub (or no LoRA).",
    )
    engine_cache_dir: str | None = Field(default=None, description="Where compiled engines are cached (TensorRT).")
    dataset_path: str | None = Field(
        default=None, description="Where the dataset's .jsonl file is mounted; None: a named prompt set."
    )
    engine_path: str | None = Field(
        default=None, description="Where tensorrt.engine_path (a prebuilt engine) is mounted; None: no prebuilt."
    )
    simulated_gpus: str | None = Field(
        default=None,
        description="Where the description of simulated GPUs is mounted (llem run --simulate-gpus): the run's "
        "GPUs are simulated and its NVML is a simulator; None (always, unless asked for): real GPUs or the CPU.",
    )


def canonical_json(data: object) -> str:
    """Stable JSON text used for hashing: sorted keys, no whitespace."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: ExperimentConfig) -> str:
    """16 hex chars of SHA-256 over the canonical explicit config.

    Fields left at None ("the engine's default") are dropped, so adding a new optional
    field to the schema does not change the identity of existing experiments, and so is
    ``cold_start`` where it is off (added after the hashes of earlier studies were taken);
    ``output_dir`` (where results go, not what is measured) is never part of it.
    """
    exclude = {"output_dir"} if config.cold_start else {"output_dir", "cold_start"}
    explicit = config.model_dump(mode="json", exclude_none=True, exclude=exclude)
    return hashlib.sha256(canonical_json(explicit).encode()).hexdigest()[:16]
