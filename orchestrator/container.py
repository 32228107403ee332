"""The container spec of one run: a pure function of the plan and the host's paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llem_agent.contract import CONTAINER_HF_HOME, CONTAINER_MODEL_DIR, CONTAINER_RUN_DIR, EXPERIMENT_FILE

LABEL_MANAGED = "llem.managed"
LABEL_STUDY = "llem.study"
LABEL_RUN = "llem.run"
LABEL_HOST_PID = "llem.host_pid"
# Secrets reach the container through the environment only; their values never enter a spec.
PASSTHROUGH_ENV = ("HF_TOKEN",)


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the launcher needs to start one agent container."""

    image: str
    name: str
    command: tuple[str, ...]
    labels: dict[str, str]
    environment: dict[str, str]
    passthrough_env: tuple[str, ...]
    mounts: tuple[Mount, ...]
    gpu_ids: tuple[str, ...]
    network_disabled: bool
    user: str


def labels(study_id: str, run_id: str, host_pid: int) -> dict[str, str]:
    """Labels on every container llem starts; the reaper and the tests find them by these."""
    return {LABEL_MANAGED: "true", LABEL_STUDY: study_id, LABEL_RUN: run_id, LABEL_HOST_PID: str(host_pid)}


def container_name(study_id: str, run_id: str) -> str:
    """A readable, unique container name (Docker allows [a-zA-Z0-9_.-])."""
    return f"llem-{study_id}-{run_id}"[:200]


def build_spec(
    *,
    image: str,
    study_id: str,
    run_id: str,
    run_dir: Path,
    hf_home: Path,
    model_dir: Path | None,
    gpu_indices: tuple[int, ...],
    user: str,
    host_pid: int,
) -> ContainerSpec:
    """The spec for one run.

    The run directory is the only writable mount; a local model is mounted read-only and
    the container then gets no network at all (a hub model needs the network to download).
    GPUs are named one by one, never "all", so a run sees exactly the devices it locked.
    """
    mounts = [Mount(run_dir, CONTAINER_RUN_DIR, read_only=False), Mount(hf_home, CONTAINER_HF_HOME, read_only=False)]
    environment = {"HF_HOME": CONTAINER_HF_HOME, "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
    if model_dir is not None:
        mounts.append(Mount(model_dir, CONTAINER_MODEL_DIR, read_only=True))
        environment["HF_HUB_OFFLINE"] = "1"
    return ContainerSpec(
        image=image,
        name=container_name(study_id, run_id),
        command=(f"{CONTAINER_RUN_DIR}/{EXPERIMENT_FILE}",),
        labels=labels(study_id, run_id, host_pid),
        environment=environment,
        passthrough_env=PASSTHROUGH_ENV,
        mounts=tuple(mounts),
        gpu_ids=tuple(str(i) for i in gpu_indices),
        network_disabled=model_dir is not None,
        user=user,
    )
