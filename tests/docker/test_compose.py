"""`docker compose run` of the agent service measures one mounted experiment file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.docker.conftest import labelled_containers


def compose_commands() -> list[list[str]]:
    """Every Compose CLI on this machine: v1 `docker-compose` and the v2 `docker compose` plugin."""
    found = []
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if plugin.returncode == 0:
        found.append(["docker", "compose"])
    return found


def test_some_compose_cli_is_installed():
    assert compose_commands(), "neither docker-compose (v1) nor the docker compose plugin (v2) is installed"


@pytest.mark.parametrize("compose", compose_commands(), ids=" ".join)
def test_compose_run_measures_the_mounted_experiment(compose, tmp_path, tiny_model, docker_client):
    results = tmp_path / "results"
    results.mkdir()
    env = {
        **os.environ,
        "LLEM_MODELS": str(tiny_model.parent),
        "LLEM_RESULTS": str(results),
        "LLEM_EXPERIMENT": str(REPO / "examples" / "compose-experiment.yaml"),
    }
    proc = subprocess.run(
        [*compose, "-f", str(REPO / "compose.yaml"), "run", "--rm", "pytorch-agent-cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = results.iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["run_id"] == run_dir.name
    assert result["n_requests"] == 16
    assert result["output_tokens"] > 0
    assert labelled_containers(docker_client, **{"llem.study": "compose"}) == []


@pytest.mark.parametrize("compose", compose_commands(), ids=" ".join)
def test_gpu_service_reserves_the_named_nvidia_device(compose):
    proc = subprocess.run(
        [*compose, "-f", str(REPO / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "LLEM_GPU": "1"},
        cwd=REPO,
        check=True,
    )
    services = yaml.safe_load(proc.stdout)["services"]
    for name in ("pytorch-agent", "vllm-agent", "tensorrt-agent"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert device["device_ids"] == ["1"]
        assert device["capabilities"] == ["gpu"]
    assert "deploy" not in services["pytorch-agent-cpu"]


@pytest.mark.parametrize("compose", compose_commands(), ids=" ".join)
def test_engine_services_default_to_ghcr_images_and_valid_experiments(compose):
    from llem.userconfig import DEFAULT_IMAGE
    from llem_agent.contract import ExperimentConfig

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLEM_")}
    proc = subprocess.run(
        [*compose, "-f", str(REPO / "compose.yaml"), "config"], capture_output=True, text=True, env=env, cwd=REPO,
        check=True,
    )  # fmt: skip
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    for engine in ("pytorch", "vllm", "tensorrt"):
        service = services[f"{engine}-agent"]
        assert service["image"] == DEFAULT_IMAGE.format(engine=engine)  # the host's default, too
        assert service["build"]["dockerfile"] == f"{engine}/Dockerfile"
        assert (REPO / "images" / engine / "Dockerfile").is_file()
        (experiment,) = [v for v in service["volumes"] if str(v).endswith("/llem/experiment.yaml:ro")
                         or (isinstance(v, dict) and v.get("target") == "/llem/experiment.yaml")]  # fmt: skip
        source = experiment["source"] if isinstance(experiment, dict) else experiment.split(":")[0]
        parsed = ExperimentConfig.model_validate(yaml.safe_load((REPO / source).read_text()))
        assert parsed.engine == engine
    assert "trt-engines" in config["volumes"]
    assert str(services["vllm-agent"]["shm_size"]).lower() in ("16gb", "17179869184")


@pytest.mark.parametrize("compose", compose_commands()[:1], ids=" ".join)
def test_an_image_built_by_plain_compose_build_passes_the_contract_check(compose, docker_client, tmp_path):
    """`docker compose build` (not `make images`) writes the contract fingerprint too: llem doctor
    accepts the image. Built on the same registry-free base as `make images`, with the CPU wheel."""
    import glob

    from tests.helpers import run_llem

    tag = "llem/test-compose-build:0"
    build = REPO / "images" / ".build"
    wheels = sorted(glob.glob("/opt/wheels/torch-*+cpu-*.whl"))
    staged: list[Path] = []
    made_wheels_dir = wheels and not (build / "wheels").exists()
    if wheels:
        (build / "wheels").mkdir(parents=True, exist_ok=True)
        staged.append(build / "wheels" / Path(wheels[-1]).name)
        shutil.copy(wheels[-1], staged[-1])
    if Path("/etc/ssl/certs/ca-certificates.crt").exists() and not (build / "ca.crt").exists():
        staged.append(build / "ca.crt")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", staged[-1])
    spec = "torch==" + Path(wheels[-1]).name.split("-")[1] if wheels else "torch"
    env = {**os.environ, "LLEM_BASE_IMAGE": "llem/base:bookworm", "LLEM_TORCH_SPEC": spec, "LLEM_IMAGE_PYTORCH": tag,
           "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}  # fmt: skip
    try:
        proc = subprocess.run(
            [*compose, "-f", str(REPO / "compose.yaml"), "build", "pytorch-agent-cpu"],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=1200, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        doctor = run_llem("doctor", "--json", env={"LLEM_IMAGE_PYTORCH": tag})
        checks = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["pytorch image"]["status"] == "ok", checks["pytorch image"]
    finally:
        for path in staged:
            path.unlink(missing_ok=True)
        if made_wheels_dir:
            (build / "wheels").rmdir()
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True)
