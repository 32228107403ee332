"""The local runner against the docker runner: the demo study both ways, result files compared
field by field. The host's .venv has the engine (`make host-engine`), as a GPU node without
Docker would; the docker side runs llem's own image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.helpers import run_llem

# Differ by nature between two runs of the same experiment (times, rates, the process and
# the place it ran in); every other field must be equal.
MEASURED = {
    "timings", "throughput", "latency", "requests", "memory", "warmup", "environment", "energy",
}  # fmt: skip
ENVIRONMENT_SAME = ("engine_version", "torch_version", "transformers_version", "device", "device_names", "gpus")


def run_both(tmp_path: Path, model: Path) -> dict[str, Path]:
    study = tmp_path / "quickstart.yaml"
    text = (REPO / "examples" / "quickstart.yaml").read_text().replace("./models/tiny-gpt2", str(model))
    study.write_text(text.replace("n_cycles: 2", "n_cycles: 1"))
    out = {}
    for runner in ("docker", "local"):
        results = tmp_path / f"results-{runner}"
        done = run_llem("run", str(study), "--runner", runner, "--results-dir", str(results))
        assert done.returncode == 0, done.stderr[-3000:]
        (study_dir,) = results.iterdir()
        out[runner] = study_dir
    return out


def keys(value: Any, prefix: str = "") -> set[str]:
    """Every dotted key of a JSON document (list items share their list's path)."""
    if isinstance(value, dict):
        return {f"{prefix}{k}" for k in value} | {p for k, v in value.items() for p in keys(v, f"{prefix}{k}.")}
    if isinstance(value, list):
        return {p for item in value for p in keys(item, prefix)}
    return set()


def test_the_demo_study_local_and_in_docker_gives_the_same_result_files(tmp_path: Path, tiny_model: Path):
    dirs = run_both(tmp_path, tiny_model)
    manifests = {k: json.loads((d / "manifest.json").read_text()) for k, d in dirs.items()}
    assert [r["run_id"] for r in manifests["local"]["runs"]] == [r["run_id"] for r in manifests["docker"]["runs"]]
    assert {r["runner"] for r in manifests["local"]["runs"]} == {"local"}
    assert {r["runner"] for r in manifests["docker"]["runs"]} == {"docker"}
    host = json.loads((dirs["local"] / "host.json").read_text())
    assert host["docker"]["runners"] == {"pytorch": "local"}
    for entry in manifests["docker"]["runs"]:
        run_id = entry["run_id"]
        docker = json.loads((dirs["docker"] / "runs" / run_id / "result.json").read_text())
        local = json.loads((dirs["local"] / "runs" / run_id / "result.json").read_text())
        assert (docker["runner"], local["runner"]) == ("docker", "local")
        assert keys(docker) == keys(local)  # one schema, field by field
        for field in set(docker) - MEASURED - {"runner"}:
            assert local[field] == docker[field], field  # config hash, tokens, effective defaults, ...
        # Same prompts, same greedy decoding, same weights: the same tokens, request by request.
        assert [(r["input_tokens"], r["output_tokens"]) for r in local["requests"]] == [
            (r["input_tokens"], r["output_tokens"]) for r in docker["requests"]
        ]
        assert {k: v for k, v in local["warmup"].items() if k != "slowest_batch_s"} == {
            k: v for k, v in docker["warmup"].items() if k != "slowest_batch_s"
        }
        assert local["warmup"]["slowest_batch_s"] > 0 and docker["warmup"]["slowest_batch_s"] > 0  # measured
        for name in ENVIRONMENT_SAME:
            assert local["environment"][name] == docker["environment"][name], name
        for side in (docker, local):
            assert side["energy"]["energy_j"] is None  # CPU machine: said, never 0 J
            assert side["latency"]["ttft_s"]["n"] == side["n_requests"]
            assert side["throughput"]["output_tokens_per_s"] > 0
        assert local["energy"]["unavailable_reason"] == docker["energy"]["unavailable_reason"]
        assert (dirs["local"] / "runs" / run_id / "container.log").read_text().count("phase=measure") == 1
    for side in dirs.values():
        summary = json.loads((side / "summary.json").read_text())
        assert [e["metrics"]["output_tokens_per_s"]["n"] for e in summary["experiments"]] == [1, 1]


def test_local_runner_refuses_an_engine_the_host_lacks(tmp_path: Path, tiny_model: Path):
    study = tmp_path / "v.yaml"
    study.write_text(f"model: {tiny_model}\nengine: vllm\nrunners: {{vllm: local}}\n")
    done = run_llem("run", str(study), "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "runner local for vllm: the engine does not import" in lines[0]
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_a_local_run_killed_by_its_timeout_is_failed_and_resumable(tmp_path: Path, tiny_model: Path):
    study = tmp_path / "slow.yaml"
    study.write_text(
        f"name: slow\nmodel: {tiny_model}\nmax_output_tokens: 8\ndataset: {{source: builtin, n_prompts: 4}}\n"
        "warmup: {n_warmup: 1}\nstudy_execution: {n_cycles: 1}\n"
    )
    env = {"LLEM_FAULT_INJECTION": "hang", "LLEM_RUNNER_PYTORCH": "local"}
    done = run_llem("run", str(study), "--results-dir", str(tmp_path / "r"), "--stall-timeout", "3", env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    (study_dir,) = (tmp_path / "r").iterdir()
    (entry,) = json.loads((study_dir / "manifest.json").read_text())["runs"]
    assert entry["failure"]["kind"] == "hung" and entry["runner"] == "local"
    local = {"LLEM_RUNNER_PYTORCH": "local"}
    resumed = run_llem("run", str(study), "--results-dir", str(tmp_path / "r"), "--resume", env=local)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (entry,) = json.loads((study_dir / "manifest.json").read_text())["runs"]
    assert entry["status"] == "completed" and entry["attempts"] == 2
