"""The container spec of one run: a pure function of the plan and the host's paths."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llem_agent.contract import (
    CONTAINER_ADAPTER_DIR,
    CONTAINER_BASELINE_DIR,
    CONTAINER_DATASET_DIR,
    CONTAINER_ENGINE_CACHE,
    CONTAINER_HF_HOME,
    CONTAINER_MODEL_DIR,
    CONTAINER_RUN_DIR,
    CONTAINER_SIMULATION_FILE,
    CONTAINER_TRT_ENGINE_DIR,
    DEFAULT_ENGINE,
    ENGINE_SECTIONS,
    EXPERIMENT_FILE,
    RAW_TRACE_ENV,
)
from llem_agent.contract.simulation import SIMULATED_DEVICES_ENV, SIMULATION_TRACE_FILE

LABEL_MANAGED = "llem.managed"
LABEL_STUDY = "llem.study"
LABEL_RUN = "llem.run"
LABEL_HOST_PID = "llem.host_pid"
LABEL_HOST = "llem.host"
LABEL_STUDY_DIR = "llem.study_dir"
# LLEM_FAULT_INJECTION is the fault tests' switch; it does nothing unless a test sets it.
# RAW_TRACE_ENV makes the agent keep the window's raw NVML readings (make gpu-check).
PASSTHROUGH_ENV = ("LLEM_FAULT_INJECTION", RAW_TRACE_ENV)
# HF_TOKEN never enters a container's environment (where `docker inspect` shows it): a run that
# may download from the hub gets it as a read-only file, which huggingface_hub reads through
# HF_TOKEN_PATH; a run with a local model gets nothing.
SECRET_ENV = "HF_TOKEN"
# Set by llem k8s on every pod: the pod's own image (by digest where the Job names it so), which
# the local runner inside it records as the image its runs ran in.
POD_IMAGE_ENV = "LLEM_POD_IMAGE"
CONTAINER_TOKEN_FILE = "/run/secrets/hf_token"
DEFAULT_PIDS_LIMIT = 16384  # processes and threads of one run (vLLM and TensorRT-LLM spawn many)
NONROOT = "65532"  # the agent's user when llem itself runs as root
AGENT_USER = "llem"  # its name: the images have no passwd entry for the host's uid
# Writable caches for the agent's libraries, on the /tmp tmpfs (the root filesystem is read-only):
# torch inductor (torch.compile, vLLM at start-up), Triton, and anything that honours XDG.
CONTAINER_CACHE_ROOT = "/tmp/llem-cache"


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the runner needs to start one agent container."""

    image: str
    name: str
    command: tuple[str, ...]
    labels: dict[str, str]
    environment: dict[str, str]  # what the agent needs wherever it runs (paths are mount targets)
    passthrough_env: tuple[str, ...]
    mounts: tuple[Mount, ...]
    gpu_ids: tuple[str, ...]
    network_disabled: bool
    user: str
    group_add: tuple[str, ...] = ()
    # Only inside a container: a name and HOME for a uid without a passwd entry, writable caches
    # on the tmpfs, and NVIDIA_VISIBLE_DEVICES=void on a CPU run.
    container_environment: dict[str, str] | None = None
    engine: str = DEFAULT_ENGINE
    gpu_uuids: tuple[str, ...] = ()
    memory_limit: str | None = None
    pids_limit: int | None = DEFAULT_PIDS_LIMIT
    read_only_root: bool = True
    tmpfs: dict[str, str] | None = None
    shm_size: str | None = None
    ulimits: tuple[tuple[str, int, int], ...] = ()  # (name, soft, hard)
    cpuset: tuple[int, ...] = ()  # CPU cores the run is pinned to (parallel runs on CPU); () = any
    simulated: bool = False  # --simulate-gpus: no NVIDIA device, the simulation's description mounted instead

    def mount_at(self, target: str) -> Mount | None:
        """The mount whose container path is ``target``, if any."""
        return next((m for m in self.mounts if m.target == target), None)


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


def dataset_target(dataset_file: Path) -> str:
    """Where a local prompt file is mounted in the container (read-only)."""
    return f"{CONTAINER_DATASET_DIR}/{dataset_file.name}"


def container_environment(
    gpu_indices: tuple[int, ...], simulated_uuids: tuple[str, ...] | None = None
) -> dict[str, str]:
    """Environment only a container needs. Its uid has no passwd entry, so USER and LOGNAME
    name it (``getpass.getuser()``, which torch inductor calls, reads them first); caches go to
    the tmpfs; a CPU run hides every GPU even where nvidia is Docker's default runtime. A run on
    simulated GPUs (``simulated_uuids``) hides every real GPU too, and is given its simulated
    GPUs by UUID as a real run is given its GPUs: ``LLEM_SIMULATED_DEVICES`` for the simulated
    NVML (what the NVIDIA runtime's device injection is to the real one), and CUDA_VISIBLE_DEVICES."""
    env = {
        "HOME": "/tmp",
        "USER": AGENT_USER,
        "LOGNAME": AGENT_USER,
        "XDG_CACHE_HOME": CONTAINER_CACHE_ROOT,
        "TORCHINDUCTOR_CACHE_DIR": f"{CONTAINER_CACHE_ROOT}/torchinductor",
        "TRITON_CACHE_DIR": f"{CONTAINER_CACHE_ROOT}/triton",
    }
    if not gpu_indices or simulated_uuids is not None:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    if simulated_uuids is not None:
        env[SIMULATED_DEVICES_ENV] = env["CUDA_VISIBLE_DEVICES"] = ",".join(simulated_uuids)
    return env


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
    engine: str = DEFAULT_ENGINE,
    gpu_uuids: tuple[str, ...] = (),
    prebuilt_engine: Path | None = None,
    dataset_file: Path | None = None,
    token_file: Path | None = None,
    pids_limit: int | None = DEFAULT_PIDS_LIMIT,
    cpuset: tuple[int, ...] = (),
    simulation_file: Path | None = None,
    processes: int = 1,
    simulation_trace: Path | None = None,
) -> ContainerSpec:
    """The spec for one run.

    The run directory is the only writable mount; a local model is mounted read-only and
    the container then gets no network at all (a hub model needs the network to download).
    GPUs are named one by one, never "all", so a run sees exactly the devices it locked.
    The agent never runs as root: as the host user, or, when llem runs as root, as an
    unprivileged uid in the root group (the run directory is group-writable for it). Simulated
    GPUs (``simulation_file``: their description) get no NVIDIA device request: the description
    is mounted read-only (and beside it the recorded trace that drives them, ``simulation_trace``)
    and the run is told which simulated GPUs are its own.
    """
    group_add: tuple[str, ...] = ()
    if host_uid == 0:
        user, group_add = f"{NONROOT}:{NONROOT}", ("0",)
    else:
        user = f"{host_uid}:{host_gid}"
    mounts = [Mount(run_dir, CONTAINER_RUN_DIR, read_only=False), Mount(hf_home, CONTAINER_HF_HOME, read_only=False)]
    if baseline_cache is not None:
        mounts.append(Mount(baseline_cache, CONTAINER_BASELINE_DIR, read_only=False))
    # CUDA numbers devices fastest-first by default, NVML and Docker by PCI bus: make them agree.
    environment = {"HF_HOME": CONTAINER_HF_HOME, "PYTHONUNBUFFERED": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if model_dir is not None:
        mounts.append(Mount(model_dir, CONTAINER_MODEL_DIR, read_only=True))
        environment["HF_HUB_OFFLINE"] = "1"
    if adapter_dir is not None:
        mounts.append(Mount(adapter_dir, CONTAINER_ADAPTER_DIR, read_only=True))
    if engine_cache is not None:
        mounts.append(Mount(engine_cache, CONTAINER_ENGINE_CACHE, read_only=False))
    if prebuilt_engine is not None:
        mounts.append(Mount(prebuilt_engine, CONTAINER_TRT_ENGINE_DIR, read_only=True))
    if dataset_file is not None:
        mounts.append(Mount(dataset_file, dataset_target(dataset_file), read_only=True))
    if token_file is not None:
        mounts.append(Mount(token_file, CONTAINER_TOKEN_FILE, read_only=True))
        environment["HF_TOKEN_PATH"] = CONTAINER_TOKEN_FILE
    if simulation_file is not None:
        mounts.append(Mount(simulation_file, CONTAINER_SIMULATION_FILE, read_only=True))
        if simulation_trace is not None:
            beside = str(PurePosixPath(CONTAINER_SIMULATION_FILE).with_name(SIMULATION_TRACE_FILE))
            mounts.append(Mount(simulation_trace, beside, read_only=True))
    # Several GPUs in one run (tensor / pipeline parallelism), or an engine whose workers are
    # processes of their own (its section's multiprocess trait: vLLM's engine core, TensorRT-LLM's
    # MPI worker, even at tensor-parallel 1): NCCL and the workers exchange through shared memory
    # and, on GPUs, pin host memory (NVIDIA's limits). A CPU run pins nothing, and some hosts
    # forbid raising memlock at all (nor does a run on simulated GPUs, whose engine runs on the CPU).
    # ``processes``: agent ranks of one run (PyTorch tensor parallelism under torchrun).
    multiprocess = len(gpu_indices) > 1 or ENGINE_SECTIONS[engine].multiprocess or processes > 1
    pins = bool(gpu_indices) and simulation_file is None
    ulimits = ((("memlock", -1, -1),) if pins else ()) + (("stack", 67108864, 67108864),)
    # By UUID where known: in a cgroup-constrained job NVML's index 0 is not the host's (Docker's) 0.
    devices = gpu_uuids if len(gpu_uuids) == len(gpu_indices) else tuple(str(i) for i in gpu_indices)
    return ContainerSpec(
        image=image,
        name=container_name(study_id, run_id),
        command=(f"{CONTAINER_RUN_DIR}/{EXPERIMENT_FILE}",),
        labels=labels(study_id, run_id, host_pid, run_dir.parent.parent),
        environment=environment,
        passthrough_env=PASSTHROUGH_ENV,
        mounts=tuple(mounts),
        gpu_ids=() if simulation_file is not None else devices,
        network_disabled=model_dir is not None,
        user=user,
        group_add=group_add,
        memory_limit=memory_limit,
        pids_limit=pids_limit,
        tmpfs={"/tmp": "rw,nosuid,nodev,exec,size=4g"},
        shm_size="16g" if multiprocess else None,
        ulimits=ulimits if multiprocess else (),
        cpuset=cpuset,
        container_environment=container_environment(gpu_indices, devices if simulation_file is not None else None),
        engine=engine,
        gpu_uuids=gpu_uuids,
        simulated=simulation_file is not None,
    )
