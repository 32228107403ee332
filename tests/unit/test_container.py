from pathlib import Path

import docker.types
import pytest

from llem.container import LABEL_MANAGED, LABEL_RUN, LABEL_STUDY, ContainerSpec, build_spec
from llem.docker_runner import _run_kwargs


def spec(model_dir: Path | None = None, gpus: tuple[int, ...] = (), uid: int = 1000):
    return build_spec(
        image="llem/pytorch:test",
        study_id="s_20260101T000000Z",
        run_id="e001-c1",
        run_dir=Path("/results/s/runs/e001-c1"),
        hf_home=Path("/home/u/.cache/huggingface"),
        model_dir=model_dir,
        gpu_indices=gpus,
        host_uid=uid,
        host_gid=1000,
        host_pid=42,
        memory_limit="2g",
    )


def test_labels_and_name():
    s = spec()
    assert s.labels[LABEL_MANAGED] == "true"
    assert s.labels[LABEL_STUDY] == "s_20260101T000000Z"
    assert s.labels[LABEL_RUN] == "e001-c1"
    assert s.name == "llem-s_20260101T000000Z-e001-c1"


def test_local_model_is_read_only_and_disables_network():
    s = spec(model_dir=Path("/models/tiny"))
    model = [m for m in s.mounts if m.target == "/llem/model"]
    assert model and model[0].read_only
    assert s.network_disabled
    assert s.environment["HF_HUB_OFFLINE"] == "1"
    hub = spec()
    assert not hub.network_disabled
    assert all(m.target != "/llem/model" for m in hub.mounts)


def test_run_dir_and_hf_cache_are_mounted_writable():
    targets = {m.target: m.read_only for m in spec().mounts}
    assert targets["/llem/run"] is False
    assert targets["/llem/hf-cache"] is False


def test_gpus_are_named_one_by_one_never_all():
    kwargs = _run_kwargs(spec(gpus=(0, 3)))
    (request,) = kwargs["device_requests"]
    assert isinstance(request, docker.types.DeviceRequest)
    assert request.device_ids == ["0", "3"]
    assert request.count in (None, 0)
    assert "device_requests" not in _run_kwargs(spec())


def test_gpus_are_requested_by_uuid_where_the_host_knows_them():
    # Inside a cgroup-constrained Slurm job NVML numbers the job's GPUs from 0, Docker the host's:
    # an index would hand the container another job's GPU, a UUID never does.
    uuids = ("GPU-5c1e0000-0000-0000-0000-000000000002", "GPU-8f2a0000-0000-0000-0000-000000000005")
    s = build_spec(
        image="llem/pytorch:test", study_id="s", run_id="e001-c1", run_dir=Path("/r/s/runs/e001-c1"),
        hf_home=Path("/hf"), model_dir=None, gpu_indices=(0, 1), gpu_uuids=uuids, host_uid=1000, host_gid=1000,
        host_pid=42,
    )  # fmt: skip
    (request,) = _run_kwargs(s)["device_requests"]
    assert request.device_ids == list(uuids)


def test_hf_token_is_a_read_only_file_and_never_in_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    local = spec(model_dir=Path("/models/tiny"))  # no download can happen: no token at all
    assert "HF_TOKEN" not in _run_kwargs(local)["environment"] and "HF_TOKEN_PATH" not in local.environment
    hub = build_spec(
        image="i", study_id="s", run_id="e001-c1", run_dir=Path("/r/s/runs/e001-c1"), hf_home=Path("/hf"),
        model_dir=None, gpu_indices=(), host_uid=1000, host_gid=1000, host_pid=1, token_file=Path("/tmp/x/hf_token"),
    )  # fmt: skip
    kwargs = _run_kwargs(hub)
    assert "hf_secret_value" not in repr(kwargs)  # docker inspect shows environment and mounts, not the file
    assert kwargs["environment"]["HF_TOKEN_PATH"] == "/run/secrets/hf_token"
    assert kwargs["volumes"]["/tmp/x/hf_token"] == {"bind": "/run/secrets/hf_token", "mode": "ro"}


def test_runs_have_a_pids_limit():
    assert _run_kwargs(spec())["pids_limit"] == 16384


def test_agent_is_hardened_and_never_root():
    kwargs = _run_kwargs(spec(uid=0))
    assert kwargs["user"] == "65532:65532"
    assert kwargs["group_add"] == ["0"]
    assert kwargs["cap_drop"] == ["ALL"]
    assert kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["read_only"] is True
    assert "/tmp" in kwargs["tmpfs"]
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == "2g"
    assert _run_kwargs(spec(uid=1000))["user"] == "1000:1000"
    assert not any("docker.sock" in source for source in kwargs["volumes"])


def test_multi_gpu_runs_get_shared_memory_and_memlock():
    one, two = spec(gpus=(0,)), spec(gpus=(0, 1))
    assert one.shm_size is None and one.ulimits == ()
    assert two.shm_size == "16g" and ("memlock", -1, -1) in two.ulimits
    kwargs = _run_kwargs(two)
    assert kwargs["shm_size"] == "16g" and {u["Name"] for u in kwargs["ulimits"]} == {"memlock", "stack"}


def test_adapter_and_engine_cache_mounts():
    s = build_spec(
        image="i", study_id="s", run_id="e001-c1", run_dir=Path("/r/s/runs/e001-c1"), hf_home=Path("/hf"),
        model_dir=None, gpu_indices=(), host_uid=1000, host_gid=1000, host_pid=1,
        adapter_dir=Path("/adapters/a"), engine_cache=Path("/cache/engines"),
    )  # fmt: skip
    mounts = {m.target: m for m in s.mounts}
    assert mounts["/llem/adapter"].source == Path("/adapters/a") and mounts["/llem/adapter"].read_only
    assert not mounts["/llem/engine-cache"].read_only


def test_parallel_engines_lock_as_many_gpus_as_they_use():
    from llem.devices import devices_needed
    from llem_agent.contract import ExperimentConfig

    vllm = ExperimentConfig.model_validate(
        {"model": "m", "engine": "vllm", "vllm": {"engine": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}}}
    )
    trt = ExperimentConfig.model_validate({"model": "m", "engine": "tensorrt", "tensorrt": {"tensor_parallel_size": 2}})
    assert devices_needed(vllm) == 4 and devices_needed(trt) == 2
    assert devices_needed(ExperimentConfig.model_validate({"model": "m"})) == 1


def _container_env(s) -> dict[str, str]:
    return _run_kwargs(s)["environment"]


def test_an_agent_uid_without_passwd_entry_still_has_a_name_and_writable_caches():
    """torch inductor (torch.compile, vLLM at start-up) calls getpass.getuser(), which dies with
    KeyError where the uid has no passwd entry unless USER / LOGNAME name it."""
    import subprocess
    import sys

    env = _container_env(spec(uid=0))
    probe = (
        "import getpass, pwd\n"
        "def missing(uid): raise KeyError(f'getpwuid(): uid not found: {uid}')\n"
        "pwd.getpwuid = missing\n"
        "print(getpass.getuser())"
    )
    clean = dict(env) | {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], env=clean, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "llem"
    tmpfs = next(iter(spec().tmpfs or {}))
    for key in ("HOME", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert env[key].startswith(tmpfs), key  # the root filesystem is read-only; the tmpfs is not


def test_cpu_runs_hide_every_gpu_and_device_order_is_the_bus_order():
    cpu, gpu = _container_env(spec()), _container_env(spec(gpus=(1,)))
    assert cpu["NVIDIA_VISIBLE_DEVICES"] == "void"  # nvidia as Docker's default runtime would show them all
    assert "NVIDIA_VISIBLE_DEVICES" not in gpu  # Docker sets it from the device request
    assert cpu["CUDA_DEVICE_ORDER"] == gpu["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


@pytest.mark.parametrize("engine", ["vllm", "tensorrt"])
def test_engines_with_worker_processes_get_shared_memory_even_on_one_gpu(engine):
    s = build_spec(
        image="i", study_id="s", run_id="e001-c1", run_dir=Path("/r/s/runs/e001-c1"), hf_home=Path("/hf"),
        model_dir=None, gpu_indices=(0,), host_uid=1000, host_gid=1000, host_pid=1, engine=engine,
    )  # fmt: skip
    assert s.shm_size == "16g" and ("memlock", -1, -1) in s.ulimits
    cpu = build_spec(
        image="i", study_id="s", run_id="e001-c1", run_dir=Path("/r/s/runs/e001-c1"), hf_home=Path("/hf"),
        model_dir=None, gpu_indices=(), host_uid=1000, host_gid=1000, host_pid=1, engine=engine,
    )  # fmt: skip
    assert cpu.shm_size == "16g" and all(name != "memlock" for name, _, _ in cpu.ulimits)  # nothing to pin


def test_a_pytorch_run_of_several_agent_processes_gets_shared_memory_on_the_cpu_too():
    """Tensor parallelism (torchrun, gloo on the CPU) is two processes even without a GPU."""

    def cpu_spec(processes: int) -> ContainerSpec:
        return build_spec(
            image="i", study_id="s", run_id="e001-c1", run_dir=Path("/r/s/runs/e001-c1"), hf_home=Path("/hf"),
            model_dir=None, gpu_indices=(), host_uid=1000, host_gid=1000, host_pid=1, processes=processes,
        )  # fmt: skip

    assert cpu_spec(1).shm_size is None
    ranks = cpu_spec(2)
    assert ranks.shm_size == "16g" and all(name != "memlock" for name, _, _ in ranks.ulimits)


def test_a_prebuilt_tensorrt_engine_is_mounted_read_only():
    s = build_spec(
        image="i", study_id="s", run_id="e001-c1", run_dir=Path("/r/s/runs/e001-c1"), hf_home=Path("/hf"),
        model_dir=None, gpu_indices=(0,), host_uid=1000, host_gid=1000, host_pid=1, engine="tensorrt",
        prebuilt_engine=Path("/engines/llama-fp8"),
    )  # fmt: skip
    mount = s.mount_at("/llem/trt-engine")
    assert mount is not None and mount.read_only and mount.source == Path("/engines/llama-fp8")
