"""The spine through real containers: study.yaml -> locks -> containers -> agent -> results."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from llem import __version__
from llem.container import LABEL_STUDY
from llem.errors import EXIT_ENVIRONMENT, EXIT_RUNS_FAILED
from llem.locks import DeviceLocks
from tests.conftest import REPO
from tests.docker.conftest import labelled_containers
from tests.helpers import run_llem

PLANTED_TOKEN = "hf_llemTestToken_9f8e7d6c5b4a"

STUDY = """
name: spine
model: {model}
engine: transformers
max_input_tokens: 24
max_output_tokens: 16
dataset:
  source: {source}
  n_prompts: 8
decoder:
  do_sample: false
warmup:
  n_warmup: 2
sweep:
  pytorch.batch_size: [1, 4]
study_execution:
  n_cycles: 2
  experiment_order: interleave
"""


def write_study(tmp_path: Path, model: Path, source: str = "builtin", n_cycles: int = 2) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(model=model, source=source).replace("n_cycles: 2", f"n_cycles: {n_cycles}"))
    return path


def llem_args(tmp_path: Path, study: Path) -> list[str]:
    return ["run", str(study), "--results-dir", str(tmp_path / "results"), "--lock-dir", str(tmp_path / "locks")]


def assert_summaries(tmp_path: Path, study_dir: Path) -> None:
    """Statistics across cycles were written at the end, from these very results."""
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["swept"] == ["pytorch.batch_size"]
    assert [e["completed"] for e in summary["experiments"]] == [2, 2]
    for exp in summary["experiments"]:
        tps = [
            json.loads((study_dir / "runs" / f"e{exp['experiment']:03d}-c{c}" / "result.json").read_text())[
                "throughput"
            ]["output_tokens_per_s"]
            for c in (1, 2)
        ]
        assert exp["metrics"]["output_tokens_per_s"]["mean"] == pytest.approx(sum(tps) / 2)
        assert exp["metrics"]["output_tokens_per_s"]["n"] == 2
    assert summary["energy_unavailable_reason"] == "no GPU was given to this run (CPU run)"
    for name in ("summary.csv", "summary.parquet", "runs.csv", "runs.parquet", "experiments.json"):
        assert (study_dir / name).stat().st_size > 0
    results = run_llem("results", str(tmp_path / "results"), "--sort", "output_tokens_per_s")
    assert results.returncode == 0 and "spine (completed)" in results.stdout
    report = run_llem("report", str(study_dir))
    assert report.returncode == 0 and (study_dir / "report.html").stat().st_size > 1_000_000


def test_two_experiments_two_cycles_through_real_containers(tmp_path, tiny_model, docker_client):
    study = write_study(tmp_path, tiny_model)
    env = {"HF_TOKEN": PLANTED_TOKEN, "HF_HOME": str(tmp_path / "hf")}
    proc = run_llem(*llem_args(tmp_path, study), env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "4/4 runs completed" in proc.stdout

    (study_dir,) = (tmp_path / "results").iterdir()
    assert study_dir.name.startswith("spine_")
    manifest = json.loads((study_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert [r["run_id"] for r in manifest["runs"]] == ["e001-c1", "e002-c1", "e001-c2", "e002-c2"]
    assert (study_dir / "study.yaml").read_text() == study.read_text()
    host = json.loads((study_dir / "host.json").read_text())
    (image,) = host["images"].values()
    assert image["id"].startswith("sha256:")
    assert image["labels"]["io.llem.engine"] == "pytorch"
    assert host["docker"]["version"]

    batch_sizes = set()
    for run in manifest["runs"]:
        assert run["status"] == "completed"
        run_dir = study_dir / "runs" / run["run_id"]
        request = json.loads((run_dir / "experiment.json").read_text())
        result = json.loads((run_dir / "result.json").read_text())
        assert "phase=measure" in (run_dir / "container.log").read_text()
        assert result["run_id"] == run["run_id"]
        assert result["config_hash"] == request["config_hash"] == run["config_hash"]
        assert result["n_requests"] == 8
        assert result["flops_estimate"] == 2 * result["model_parameters"] * (
            result["input_tokens"] + result["output_tokens"]
        )
        assert result["output_tokens"] > 0
        assert result["throughput"]["output_tokens_per_s"] > 0
        assert result["environment"]["uid"] not in (0, None), "the agent ran as root"
        assert result["environment"]["cpus_available"] >= 1
        assert result["warmup"]["thermal_floor_note"] == "not applied: no GPU (CPU run)"
        assert result["energy"]["baseline_note"] == "no baseline: no GPU was given to this run (CPU run)"
        assert result["energy"]["energy_j"] is None
        assert result["energy"]["unavailable_reason"]
        for req in result["requests"]:
            assert 0 < req["input_tokens"] <= 24
            assert 1 <= req["output_tokens"] <= 16
            assert len(req["token_times_s"]) == req["output_tokens"]
            assert req["ttft_s"] <= req["e2e_latency_s"]
            assert req["token_times_s"] == sorted(req["token_times_s"])
        batch_sizes.add(result["effective"]["batch_size"])
    assert batch_sizes == {1, 4}

    assert_summaries(tmp_path, study_dir)

    assert DeviceLocks(["cpu"], tmp_path / "locks").try_acquire(), "device lock still held after the study"
    assert labelled_containers(docker_client, **{LABEL_STUDY: study_dir.name}) == []
    for path in [*study_dir.rglob("*"), tmp_path / "hf"]:
        if path.is_file():
            assert PLANTED_TOKEN not in path.read_text(errors="replace"), f"token leaked into {path}"


def test_agent_failure_keeps_error_and_log_and_the_study_reports_it(tmp_path, tiny_model, docker_client):
    study = write_study(tmp_path, tiny_model, n_cycles=1)
    proc = run_llem(*llem_args(tmp_path, study), env={"LLEM_FAULT_INJECTION": "error"})
    assert proc.returncode == EXIT_RUNS_FAILED, proc.stderr + proc.stdout
    (study_dir,) = (tmp_path / "results").iterdir()
    manifest = json.loads((study_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    for run in manifest["runs"]:
        assert run["status"] == "failed"
        assert run["failure"]["kind"] == "agent_error"
        assert run["failure"]["type"] == "RuntimeError"
        error = json.loads((study_dir / "runs" / run["run_id"] / "error.json").read_text())
        assert error["phase"] == "measure"
        assert "Traceback" in error["traceback"]
        assert "injected fault" in (study_dir / "runs" / run["run_id"] / "container.log").read_text()
    assert labelled_containers(docker_client, **{LABEL_STUDY: study_dir.name}) == []


def test_a_missing_prompt_file_is_refused_before_any_container(tmp_path, tiny_model, docker_client):
    study = write_study(tmp_path, tiny_model, source="missing-prompts.jsonl", n_cycles=1)
    proc = run_llem(*llem_args(tmp_path, study))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"llem: error: dataset file not found: {tmp_path}/missing-prompts.jsonl"
    ]
    assert not (tmp_path / "results").exists()


def test_missing_image_is_one_line_and_creates_no_results(tmp_path, tiny_model, docker_client):
    study = write_study(tmp_path, tiny_model)
    proc = run_llem(*llem_args(tmp_path, study), "--image", "pytorch=llem/does-not-exist:0", "--no-pull")
    assert proc.returncode == EXIT_ENVIRONMENT
    assert proc.stderr.strip().splitlines() == [
        "llem: error: image llem/does-not-exist:0 not found; pull it (llem pull, or docker pull "
        "llem/does-not-exist:0) or build it (`make images` builds the pytorch one, `docker compose build "
        "<engine>-agent` any)"
    ]
    assert not (tmp_path / "results").exists()
    pulled = run_llem(*llem_args(tmp_path, study), "--image", "pytorch=llem/does-not-exist:0")  # no registry has it
    assert pulled.returncode == EXIT_ENVIRONMENT
    (error,) = [line for line in pulled.stderr.strip().splitlines() if line.startswith("llem: error")]
    assert error.startswith("llem: error: image llem/does-not-exist:0 is not on this host and cannot be pulled (")
    assert "make images" in error and "Traceback" not in pulled.stderr
    assert not (tmp_path / "results").exists()


def test_image_carries_contract_labels(docker_client: docker.DockerClient):
    from llem_agent.contract import CONTRACT_VERSION
    from tests.docker.conftest import IMAGE

    labels = docker_client.images.get(IMAGE).labels
    assert labels["io.llem.engine"] == "pytorch"
    assert labels["io.llem.contract-version"] == CONTRACT_VERSION


def test_doctor_on_this_machine(docker_client: docker.DockerClient):
    proc = run_llem("doctor", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = {c["check"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["Docker daemon"]["status"] == "ok"
    assert checks["pytorch image"]["status"] == "ok"
    proc = run_llem("doctor", "--json", "--engine", "vllm", env={"LLEM_IMAGE_VLLM": "llem/no-such-image:0"})
    assert proc.returncode == EXIT_ENVIRONMENT
    vllm = {c["check"]: c for c in json.loads(proc.stdout)["checks"]}["vllm image"]
    assert vllm["status"] == "fail" and "llem/no-such-image:0 not found" in vllm["detail"]


def test_an_image_speaking_another_contract_is_refused(tmp_path, tiny_model, docker_client):
    from tests.docker.conftest import IMAGE

    tag = "llem/test-other-contract:0"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"FROM {IMAGE}\nUSER root\nRUN echo 0123456789abcdef > /opt/llem/contract-fingerprint\n"
    )
    docker_client.images.build(path=str(tmp_path / "ctx"), tag=tag, rm=True)
    try:
        study = write_study(tmp_path, tiny_model)
        proc = run_llem(*llem_args(tmp_path, study), "--image", f"pytorch={tag}")
        assert proc.returncode == EXIT_ENVIRONMENT
        assert "speaks wire contract 0123456789abcdef" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "results").exists()
    finally:
        docker_client.images.remove(tag, force=True)


def test_lora_adapter_merged_and_unmerged_through_llem_run(tmp_path, tiny_model, tiny_adapter, docker_client):
    study = tmp_path / "lora.yaml"
    study.write_text(
        f"name: lora\nmodel: {tiny_model}\nmax_input_tokens: 16\nmax_output_tokens: 8\n"
        "dataset: {source: builtin, n_prompts: 4}\ndecoder: {do_sample: false}\nwarmup: {n_warmup: 1}\n"
        f"lora: {{adapter_path: {tiny_adapter}}}\n"
        "sweep:\n  lora.merge_weights: [false, true]\nstudy_execution: {n_cycles: 1}\n"
    )
    proc = run_llem(*llem_args(tmp_path, study))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (study_dir,) = (tmp_path / "results").iterdir()
    for run_id in ("e001-c1", "e002-c1"):
        request = json.loads((study_dir / "runs" / run_id / "experiment.json").read_text())
        assert request["adapter_path"] == "/llem/adapter"
        assert json.loads((study_dir / "runs" / run_id / "result.json").read_text())["output_tokens"] > 0
    missing = tmp_path / "missing.yaml"
    missing.write_text(study.read_text().replace(str(tiny_adapter), str(tmp_path / "nope")))
    proc = run_llem(*llem_args(tmp_path, missing))
    assert proc.returncode == 2 and "no LoRA adapter (adapter_config.json)" in proc.stderr


def test_codecarbon_sampler_through_a_real_container(tmp_path, tiny_model, docker_client):
    """energy_sampler: codecarbon in an image built with the codecarbon extra: on a CPU its
    figure (CPU + RAM) is the run's energy, and llem's own sampler stayed off."""
    from tests.docker.conftest import IMAGE

    tag = "llem/test-codecarbon:0"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"FROM {IMAGE}\nUSER root\nRUN /opt/llem/bin/pip install --no-cache-dir -q 'codecarbon>=2.8'\n"
        'LABEL io.llem.agent-extras="codecarbon"\n'
    )
    docker_client.images.build(path=str(tmp_path / "ctx"), tag=tag, rm=True)
    try:
        study = tmp_path / "cc.yaml"
        study.write_text(
            f"name: cc\nmodel: {tiny_model}\nmax_input_tokens: 16\nmax_output_tokens: 16\n"
            "dataset: {source: builtin, n_prompts: 40}\ndecoder: {do_sample: false}\nwarmup: {n_warmup: 1}\n"
            "energy_sampler: codecarbon\nstudy_execution: {n_cycles: 1}\n"
        )
        proc = run_llem(*llem_args(tmp_path, study), "--image", f"pytorch={tag}")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        (study_dir,) = (tmp_path / "results").iterdir()
        energy = json.loads((study_dir / "runs" / "e001-c1" / "result.json").read_text())["energy"]
        assert energy["source"] == "codecarbon"
        assert energy["external"]["sampler"] == "codecarbon" and energy["external"]["version"]
        assert energy["energy_j"] > 0 and energy["j_per_output_token"] > 0
        assert energy["energy_j"] == pytest.approx(sum(energy["external"]["parts_j"].values()), rel=0.01)
        # llem's own image has no extras: the host refuses before any container starts.
        proc = run_llem(*llem_args(tmp_path, study))
        assert proc.returncode == 2, proc.stderr
        assert "needs an image built with --build-arg AGENT_EXTRAS=codecarbon" in proc.stderr
    finally:
        docker_client.images.remove(tag, force=True)


def test_the_worker_image_is_refused_as_an_agent_image(tmp_path: Path, docker_client):
    """llem's Kubernetes worker image carries the engine and the contract fingerprint, so it
    passed the contract check, then every run failed ("container exited 2 without result.json"):
    its entrypoint is llem, not the agent."""
    done = run_llem("run", str(REPO / "examples" / "quickstart.yaml"), "--image",
                    f"pytorch=llem/pytorch-worker:{__version__}", "--results-dir", str(tmp_path / "r"))  # fmt: skip
    assert done.returncode == EXIT_ENVIRONMENT, done.stderr
    assert "is llem's worker image" in done.stderr and f"llem/pytorch:{__version__}" in done.stderr
    assert "Traceback" not in done.stderr
