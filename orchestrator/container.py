"""The container spec of one run: a pure function of the plan and the host's paths."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from llem_agent.contract import (
    CONTAINER_ADAPTER_DIR,
    CONTAINER_BASELINE_DIR,
    CONTAINER_ENGINE_CACHE,
    CONTAINER_HF_HOME,
    CONTAINER_MODEL_DIR,
    CONTAINER_RUN_DIR,
    EXPERIMENT_FILE,
)

LABEL_MANAGED = "llem.managed"
LABEL_STUDY = "llem.study"
LABEL_RUN = "llem.run"
LABEL_HOST_PID = "llem.host_pid"
LABEL_HOST = "llem.host"
LABEL_STUDY_DIR = "llem.study_dir"
# Secrets reach the container through the environment only; their values never enter a spec.
# LLEM_FAULT_INJECTION is the fault tests' switch; it does nothing unless a test sets it.
PASSTHROUGH_ENV = ("HF_TOKEN", "LLEM_FAULT_INJECTION")
NONROOT = "65532"  # the agent's user when llem itself runs as root


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
    group_add: tuple[str, ...] = ()
    memory_limit: str | None = None
    read_only_root: bool = True
    tmpfs: dict[str, str] | None = None
    shm_size: str | None = None
    ulimits: tuple[tuple[str, int, int], ...] = ()  # (name, soft, hard)


def labels(study_id: str, run_id: str, host_pid: int, study_dir: Path) -> dict[str, str]:
    """Labels on every container llem starts; the reaper and the tests find them by these."""
    return {
        LABEL_MANAGED: "true",
        LABEL_STUDY: study_id,
        LABEL_RUN: run_id,
        LABEL_HOST: socket.gethostname(),
        LABEL_HOST_PID: str(host_pid),
        LABEL_STUDY_DIR: str(study_dir),
    }


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
    host_uid: int,
    host_gid: int,
    host_pid: int,
    memory_limit: str | None = None,
    baseline_cache: Path | None = None,
    adapter_dir: Path | None = None,
    engine_cache: Path | None = None,
) -> ContainerSpec:
    """The spec for one run.

    The run directory is the only writable mount; a local model is mounted read-only and
    the container then gets no network at all (a hub model needs the network to download).
    GPUs are named one by one, never "all", so a run sees exactly the devices it locked.
    The agent never runs as root: as the host user, or, when llem runs as root, as an
    unprivileged uid in the root group (the run directory is group-writable for it).
    """
    group_add: tuple[str, ...] = ()
    if host_uid == 0:
        user, group_add = f"{NONROOT}:{NONROOT}", ("0",)
    else:
        user = f"{host_uid}:{host_gid}"
    mounts = [Mount(run_dir, CONTAINER_RUN_DIR, read_only=False), Mount(hf_home, CONTAINER_HF_HOME, read_only=False)]
    if baseline_cache is not None:
        mounts.append(Mount(baseline_cache, CONTAINER_BASELINE_DIR, read_only=False))
    environment = {"HF_HOME": CONTAINER_HF_HOME, "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
    if model_dir is not None:
        mounts.append(Mount(model_dir, CONTAINER_MODEL_DIR, read_only=True))
        environment["HF_HUB_OFFLINE"] = "1"
    if adapter_dir is not None:
        mounts.append(Mount(adapter_dir, CONTAINER_ADAPTER_DIR, read_only=True))
    if engine_cache is not None:
        mounts.append(Mount(engine_cache, CONTAINER_ENGINE_CACHE, read_only=False))
    # Several GPUs in one run (tensor / pipeline parallelism): NCCL and the engines' worker
    # processes exchange through shared memory and pin host memory (NVIDIA's recommended limits).
    multi_gpu = len(gpu_indices) > 1
    return ContainerSpec(
        image=image,
        name=container_name(study_id, run_id),
        command=(f"{CONTAINER_RUN_DIR}/{EXPERIMENT_FILE}",),
        labels=labels(study_id, run_id, host_pid, run_dir.parent.parent),
        environment=environment,
        passthrough_env=PASSTHROUGH_ENV,
        mounts=tuple(mounts),
        gpu_ids=tuple(str(i) for i in gpu_indices),
        network_disabled=model_dir is not None,
        user=user,
        group_add=group_add,
        memory_limit=memory_limit,
        tmpfs={"/tmp": "rw,nosuid,nodev,exec,size=4g"},
        shm_size="16g" if multi_gpu else None,
        ulimits=(("memlock", -1, -1), ("stack", 67108864, 67108864)) if multi_gpu else (),
    )
