"""The GitHub workflows are well-formed and point at files and targets that exist; they and the
Dockerfiles pass the audit of `make lint` (zizmor, GitHub's workflow schema, hadolint), and that
gate is shown to fail on each kind of finding it was brought in for."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llem.study import load_study
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
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), f"unpinned action {step['uses']}"
            assert "${{" not in step.get("run", ""), f"{job_id}: an expression in a script (use env:): {step['run']}"
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


# --- the audit (issue 23, 7): what `make lint` runs, and that it can fail ----------------------

USES = re.compile(r"^\s*-?\s*uses: ([\w.-]+/[\w.-]+)@(\S+)(.*)$")


def test_every_action_is_pinned_to_a_commit_with_its_tag_beside_it():
    pins: dict[str, set[tuple[str, str]]] = {}
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            if match := USES.match(line):
                action, ref, comment = match.groups()
                assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{path.name}: {action}@{ref} is not a commit"
                tag = re.fullmatch(r" # (v\d+\.\d+\.\d+)", comment)
                assert tag, f"{path.name}: {action}@{ref} needs its tag as a comment ('# vX.Y.Z')"
                pins.setdefault(action, set()).add((ref, tag.group(1)))
    assert pins, "no actions found"
    assert all(len(refs) == 1 for refs in pins.values()), f"one action, several pins: {pins}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_checkouts_keep_no_credentials_and_jobs_get_only_what_they_need(path: Path):
    data = load(path)
    assert data["permissions"] in ({}, {"contents": "read"}), "workflow-wide permissions beyond reading"
    for job in data["jobs"].values():
        assert set(job.get("permissions", {}).values()) <= {"read", "write"}
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def lint_gate(workflows: list[Path], dockerfiles: list[Path]) -> list[str]:
    """The audit commands of `make lint` (all but ruff), as make would run them on these files."""
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "lint", f"VENV={sys.prefix}",
         f"LINT_WORKFLOWS={' '.join(map(str, workflows))}", f"LINT_DOCKERFILES={' '.join(map(str, dockerfiles))}"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    commands = [
        line for line in dry.stdout.splitlines() if re.search(r"/bin/(zizmor|check-jsonschema|hadolint) ", line)
    ]
    assert len(commands) == 3, dry.stdout
    for tool in ("zizmor", "check-jsonschema", "hadolint"):
        assert (Path(sys.prefix) / "bin" / tool).exists(), f"{tool} is missing: pip install -e '.[dev]'"
    return commands


def run_gate(workflows: list[Path], dockerfiles: list[Path]) -> tuple[int, str]:
    """Run the gate like make does (stop at the first failing command): exit status and output."""
    output = ""
    for command in lint_gate(workflows, dockerfiles):
        done = subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        output += done.stdout + done.stderr
        if done.returncode:
            return done.returncode, output
    return 0, output


def tracked_dockerfiles() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*Dockerfile*"], cwd=REPO, capture_output=True, text=True, check=True)
    return sorted(REPO / name for name in listed.stdout.split())


def test_the_gate_covers_every_workflow_and_dockerfile_and_passes_on_them():
    dockerfiles = tracked_dockerfiles()
    assert {p.name for p in dockerfiles} >= {"Dockerfile", "Dockerfile.ob"}
    commands = "\n".join(lint_gate(WORKFLOWS, dockerfiles))
    # --strict-collection: zizmor would otherwise skip a file that is not a valid workflow, and pass.
    assert "--offline --strict-collection" in commands and "--builtin-schema vendor.github-workflows" in commands
    defaults = subprocess.run(
        ["make", "-n", "--no-print-directory", "lint", f"VENV={sys.prefix}"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    for path in [*WORKFLOWS, *dockerfiles]:
        assert f" {path.relative_to(REPO)}" in defaults, f"make lint does not audit {path.relative_to(REPO)}"
    status, output = run_gate(WORKFLOWS, dockerfiles)
    assert status == 0, output


# Each finding the audit was brought in for, planted in a copy of a real file: the file, the text
# replaced, its replacement, and what the gate must say.
CHECKOUT_V4 = "@11d5960a326750d5838078e36cf38b85af677262 # v4.4.0"
PLANTED = [
    pytest.param(".github/workflows/ci.yml", CHECKOUT_V4, "@v4", "unpinned-uses", id="unpinned action"),
    pytest.param(
        ".github/workflows/images.yml",
        "        with:\n          persist-credentials: false\n",
        "",
        "artipacked",
        id="checkout keeps credentials",
    ),
    pytest.param(
        ".github/workflows/gpu.yml",
        'run: docker pull "${IMAGE}"',
        'run: docker pull "${{ steps.meta.outputs.image }}"',
        "template-injection",
        id="expression in a script",
    ),
    pytest.param(
        ".github/workflows/images.yml",
        "permissions: {}\n",
        "permissions: write-all\n",
        "excessive-permissions",
        id="write permissions for the whole workflow",
    ),
    pytest.param(  # zizmor accepts this key; GitHub's schema does not
        ".github/workflows/ci.yml",
        "    runs-on: ubuntu-24.04\n",
        "    runs-on: ubuntu-24.04\n    retries: 3\n",
        "'retries' was unexpected",
        id="not a workflow (schema)",
    ),
    pytest.param(
        "images/pytorch/Dockerfile",
        'SHELL ["/bin/bash", "-o", "pipefail", "-c"]\n',
        "",
        "DL4006",
        id="pipe without pipefail",
    ),
    pytest.param("images/worker/Dockerfile", "USER 65532:0\n", "", "DL3002", id="worker ends as root"),
    pytest.param(
        "images/tensorrt/Dockerfile",
        'ARG AGENT_EXTRAS=""\n',
        'ARG AGENT_EXTRAS=""\nARG HF_TOKEN\n',
        "DL3064",
        id="a secret in ARG",
    ),
]


@pytest.mark.parametrize(("name", "old", "new", "expected"), PLANTED)
def test_the_gate_fails_on_a_planted_finding(name: str, old: str, new: str, expected: str, tmp_path: Path):
    original = REPO / name
    text = original.read_text()
    assert text.count(old) == 1, f"{name} changed: plant the finding elsewhere"
    planted = tmp_path / name
    planted.parent.mkdir(parents=True)
    planted.write_text(text.replace(old, new))
    workflows = [planted if p == original else p for p in WORKFLOWS]
    dockerfiles = [planted if p == original else p for p in tracked_dockerfiles()]
    status, output = run_gate(workflows, dockerfiles)
    assert status != 0 and expected in output, output


# --- the GPU workflow fails a smoke study whose energy is missing or doubted -------------------


def energy_gate_script() -> str:
    job = load(REPO / ".github" / "workflows" / "gpu.yml")["jobs"]["smoke"]
    names = [s.get("name") for s in job["steps"]]
    (step,) = [s for s in job["steps"] if s.get("name") == "Energy measured and unflagged"]
    assert names.index("Smoke study") < names.index(step["name"]), "the check must follow the study"
    match = re.search(r"<<'EOF'\n(.*?)\nEOF\n", step["run"], flags=re.DOTALL)
    assert match, step["run"]
    return match.group(1)


def smoke_study(root: Path, *energies: dict[str, Any] | None) -> None:
    """A study directory as llem writes it: a manifest and one result.json per run (None: no result)."""
    study = root / "smoke-pytorch_2026-12-01T03-00-00"
    runs = []
    for i, energy in enumerate(energies):
        run_id = f"r{i}"
        runs.append({"run_id": run_id, "status": "completed" if energy is not None else "failed"})
        if energy is not None:
            (study / "runs" / run_id).mkdir(parents=True)
            (study / "runs" / run_id / "result.json").write_text(json.dumps({"run_id": run_id, "energy": energy}))
    study.mkdir(parents=True, exist_ok=True)
    (study / "manifest.json").write_text(json.dumps({"study_name": "smoke-pytorch", "runs": runs}))


GOOD = {"energy_j": 812.5, "flags": []}
FLAGGED = {"energy_j": 812.5, "flags": [{"code": "throttled", "message": "12% of samples thermally throttled"}]}
NULL = {"energy_j": None, "unavailable_reason": "no NVML device", "flags": []}


@pytest.mark.parametrize(
    ("energies", "status", "said"),
    [
        ((GOOD, GOOD), 0, "2 results checked"),
        ((GOOD, NULL), 1, "r1: energy_j is null (no NVML device)"),
        ((FLAGGED, GOOD), 1, "r0: flagged throttled"),
        ((GOOD, None), 1, "r1: no result.json (failed)"),
        ((), 1, "no runs"),
    ],
    ids=["measured", "null", "flagged", "missing", "empty"],
)
def test_gpu_workflow_fails_on_null_or_flagged_energy(tmp_path: Path, energies, status: int, said: str):
    smoke_study(tmp_path / "results", *energies)
    done = subprocess.run(
        [sys.executable, "-", "smoke-pytorch"], input=energy_gate_script(), capture_output=True, text=True,
        env={"LLEM_RESULTS_DIR": str(tmp_path / "results"), "PATH": "/usr/bin:/bin"}, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == status, done.stdout + done.stderr
    assert said in done.stdout + done.stderr


def test_gpu_workflow_energy_check_needs_the_study(tmp_path: Path):
    (tmp_path / "results").mkdir()
    done = subprocess.run(
        [sys.executable, "-", "smoke-pytorch"], input=energy_gate_script(), capture_output=True, text=True,
        env={"LLEM_RESULTS_DIR": str(tmp_path / "results")}, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "no study smoke-pytorch" in done.stderr
