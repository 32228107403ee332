"""Offline install: `make wheelhouse`, then `pip install --no-index --find-links DIR llem` in a
container with no network at all (a GPU node without internet access)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docker

from tests.conftest import REPO

BASE = "llem/base:bookworm"  # Debian's python3, nothing of llem's: what a bare node has


def test_llem_installs_and_plans_a_study_from_the_wheelhouse_with_no_network(
    tmp_path: Path, docker_client: docker.DockerClient, tiny_model: Path
):
    wheelhouse = tmp_path / "wheelhouse"
    made = subprocess.run(
        ["make", "--no-print-directory", "wheelhouse", f"WHEELHOUSE={wheelhouse}", f"PYTHON={sys.executable}"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    wheels = {p.name.split("-")[0].lower() for p in wheelhouse.glob("*.whl")}
    assert {"llem", "pydantic", "pydantic_core", "docker", "filelock", "nvidia_ml_py", "pyarrow"} <= wheels
    assert not wheels & {"torch", "vllm", "tensorrt_llm", "transformers"}  # the engines are the node's own
    script = (
        "set -e; python3 -m venv /tmp/v; "
        "/tmp/v/bin/pip install --quiet --no-index --find-links /wheelhouse llem; "
        "/tmp/v/bin/llem --version; "
        "/tmp/v/bin/python -c 'import llem_agent.energy, llem_agent.contract; print(\"agent ok\")'; "
        "cp -r /examples /tmp/ex; /tmp/v/bin/llem run /tmp/ex/quickstart.yaml --dry-run --json > /tmp/plan.json; "
        '/tmp/v/bin/python -c \'import json; print(len(json.load(open("/tmp/plan.json"))["runs"]), "runs planned")\''
    )
    output = docker_client.containers.run(
        BASE,
        ["sh", "-c", script],
        network_mode="none",
        volumes={
            str(wheelhouse): {"bind": "/wheelhouse", "mode": "ro"},
            str(REPO / "examples"): {"bind": "/examples", "mode": "ro"},
            str(tiny_model): {"bind": "/examples/models/tiny-gpt2", "mode": "ro"},
        },
        environment={"HOME": "/tmp"},
        remove=True,
    ).decode()
    assert "llem 0.1.0" in output
    assert "agent ok" in output
    assert "4 runs planned" in output
