"""The command of a `llem k8s` Job, run the way its pod would run it: in the worker image, as
uid 65532, read-only root, no capabilities, only the results volume mounted. No cluster can
run here; this proves what the pods execute (the Jobs themselves are validated offline in
tests/unit/test_k8s.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from llem import __version__
from llem.errors import EXIT_OK
from tests.helpers import run_llem

WORKER_IMAGE = f"llem/pytorch-worker:{__version__}"
STUDY = """
name: pods
model: ./models/tiny-gpt2
max_input_tokens: 16
max_output_tokens: 8
dataset: {source: builtin, n_prompts: 8}
decoder: {do_sample: false}
warmup: {n_warmup: 1}
sweep:
  pytorch.batch_size: [1, 2]
study_execution: {n_cycles: 1}
"""


def pod(job: dict, shared: Path, index: int) -> subprocess.CompletedProcess[str]:
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value", "") for e in container["env"] if "value" in e}
    env["POD_NAME"] = f"{job['metadata']['name']}-{index}"
    command = [part.replace("$(POD_NAME)", env["POD_NAME"]) for part in container["command"]]
    security = container["securityContext"]
    assert command[0] == "llem"
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--user", f"{security['runAsUser']}:{security['runAsGroup']}",
         "--read-only", "--tmpfs", "/tmp:exec", "--tmpfs", "/dev/shm", "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges", "-v", f"{shared}:{shared}",
         *(arg for key, value in env.items() for arg in ("-e", f"{key}={value}")),
         "--entrypoint", "llem", WORKER_IMAGE, *command[1:]],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_two_pods_run_the_job_command_and_complete_the_study(tmp_path, tiny_model, docker_client):
    shared = tmp_path / "shared"
    shutil.copytree(tiny_model, shared / "models" / "tiny-gpt2")
    study = shared / "pods.yaml"
    study.write_text(STUDY)
    shared.chmod(0o2775)  # the pods' uid writes through the root group (fsGroup 0)
    done = run_llem("k8s", str(study), "--out", str(tmp_path / "k8s"), "--results-dir", str(shared / "results"),
                    "--pvc", "results", "--cpu", "--pods", "2")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    (job_file,) = (tmp_path / "k8s").glob("*.yaml")
    job = yaml.safe_load(job_file.read_text())
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f"/pytorch-worker:{__version__}")
    (study_dir,) = (shared / "results").iterdir()
    for path in [shared / "results", study_dir, *study_dir.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o070)  # a volume the pods' group may write (fsGroup)
    first, second = pod(job, shared, 0), pod(job, shared, 1)  # one after the other: both find their way
    assert first.returncode == EXIT_OK, first.stdout + first.stderr
    assert second.returncode == EXIT_OK, second.stdout + second.stderr
    assert "ran 2 runs, 2 completed" in first.stdout and "ran 0 runs" in second.stdout
    manifest = json.loads((study_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert all(r["status"] == "completed" and r["attempts"] == 1 and r["runner"] == "local" for r in manifest["runs"])
    for run in manifest["runs"]:
        result = json.loads((study_dir / "runs" / run["run_id"] / "result.json").read_text())
        assert result["run_id"] == run["run_id"] and result["runner"] == "local" and result["output_tokens"] > 0
