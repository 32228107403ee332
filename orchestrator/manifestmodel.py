"""What ``manifest.json`` holds: the status of every run of a study and of the study itself.

The pydantic models alone (manifest.py writes the file, studydir.py reads it), so that every
module of the study directory can name them without importing the writer.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_SCHEMA_VERSION = "1"
RunStatus = Literal["pending", "running", "completed", "failed", "interrupted", "skipped"]
StudyStatus = Literal["running", "completed", "failed", "interrupted", "circuit_open", "timed_out"]
# Runs a worker may claim: not started, stopped early, or "running" under a dead worker's claim
# (--resume makes failed and skipped runs pending again; a completed run never runs again).
CLAIMABLE: frozenset[str] = frozenset({"pending", "running", "interrupted"})


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class RunFailure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        description="agent_error | device_lost | timeout | hung | oom | killed | no_result | corrupt_result "
        "| circuit_open | timed_out"
    )
    type: str | None = None
    message: str


class RunEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    experiment_index: int
    cycle: int
    config_hash: str
    status: RunStatus = "pending"
    image: str
    runner: Literal["docker", "local"] = "docker"
    image_id: str | None = Field(
        default=None,
        description="The id of the image its last attempt's container ran (sha256:...); None for a local run, an "
        "attempt that never got a container, and manifests of an llem that did not record it.",
    )
    image_digest: str | None = Field(
        default=None, description="A registry digest of that image (repo@sha256:...), where the host had one."
    )
    devices: list[str] = Field(default_factory=list)
    host: str | None = Field(default=None, description="The host the run ran on (its last attempt).")
    overlapped_with: list[str] = Field(
        default_factory=list, description="Runs measured while this one was (parallel runs): they shared the host."
    )
    started_at: str | None = None
    finished_at: str | None = None
    wall_s: float | None = None
    exit_code: int | None = None
    failure: RunFailure | None = None
    attempts: int = 0


class SkippedEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    reason: str
    point: str = Field(default="", description="What makes it this grid point: its swept values.")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: str = MANIFEST_SCHEMA_VERSION
    study_name: str
    study_id: str
    study_design_hash: str
    study_file: str | None = Field(default=None, description="The study file it was planned from (workers read it).")
    llem_version: str
    status: StudyStatus = "running"
    created_at: str = Field(default_factory=utc_now)
    updated_at: str = Field(default_factory=utc_now)
    n_cycles: int
    experiment_order: str
    shuffle_seed: int | None
    protocol: dict[str, Any] | None = Field(
        default=None,
        description="The whole measurement protocol it was planned with: --profile, cycles, order, seed, pauses, "
        "circuit breaker, timeouts, sampling interval (what a resume runs with is in host.json's resumed).",
    )
    runs: list[RunEntry]
    skipped: list[SkippedEntry] = Field(default_factory=list)
    history: list[dict[str, str]] = Field(
        default_factory=list, description="Every status the study has had, oldest first, with its time."
    )

    def run(self, run_id: str) -> RunEntry:
        for entry in self.runs:
            if entry.run_id == run_id:
                return entry
        raise KeyError(run_id)
