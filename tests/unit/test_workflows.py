"""The GitHub workflows are well-formed and point at files and targets that exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.study import load_study
from tests.conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
MAKE_TARGETS = set(re.findall(r"^([a-zA-Z_-]+):", (REPO / "Makefile").read_text(), flags=re.MULTILINE))


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def test_the_three_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "images.yml", "gpu.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_shape(path: Path):
    data = load(path)
    assert data["name"] and data["on"] and data["jobs"]
    text = path.read_text()
    assert text.count("${{") == text.count("}}"), "unbalanced expression"
    for job_id, job in data["jobs"].items():
        assert job.get("runs-on"), f"{job_id}: no runs-on"
        assert job.get("timeout-minutes"), f"{job_id}: no timeout"
        assert job["steps"], f"{job_id}: no steps"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{job_id}: a step needs exactly one of uses/run: {step}"
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), f"unpinned action {step['uses']}"
            for key in step.get("env", {}):
                assert "${{" not in key, f"{job_id}: expressions are not allowed in env names: {key}"
            for target in re.findall(r"\bmake ([a-z-]+)", step.get("run", "")):
                assert target in MAKE_TARGETS, f"make {target} is not a Makefile target"


def test_images_workflow_builds_each_engine_dockerfile():
    job = load(REPO / ".github" / "workflows" / "images.yml")["jobs"]["build"]
    engines = job["strategy"]["matrix"]["engine"]
    assert engines == ["pytorch", "vllm", "tensorrt"]
    for engine in engines:
        assert (REPO / "images" / engine / "Dockerfile").is_file()
    build = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["cache-from"] and build["with"]["cache-to"]
    assert load(REPO / ".github" / "workflows" / "images.yml")["on"]["push"]["tags"] == ["v*"]


def test_gpu_workflow_smoke_studies_are_valid():
    job = load(REPO / ".github" / "workflows" / "gpu.yml")["jobs"]["smoke"]
    assert "gpu" in job["runs-on"] and "self-hosted" in job["runs-on"]
    for engine in job["strategy"]["matrix"]["engine"]:
        study = load_study(REPO / "examples" / f"smoke-{engine}.yaml")
        assert {e.config.engine for e in study.experiments} == {engine}
        assert len(study.experiments) == 2
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in job["steps"])
