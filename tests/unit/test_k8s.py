"""`llem k8s`: Indexed Jobs validated offline against the Kubernetes API schemas (--strict)."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from llem.errors import EXIT_OK, ConfigError
from llem.k8s import DNS_LABEL, K8sOptions, job_name
from llem.manifest import ManifestStore
from tests.helpers import run_llem

MIXED = """
name: mixed
model: ./model
experiments:
  - engine: pytorch
  - engine: vllm
    vllm: {engine: {tensor_parallel_size: 2}}
  - engine: vllm
study_execution: {n_cycles: 2}
"""


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    path = tmp_path / "mixed.yaml"
    path.write_text(MIXED)
    return path


def jobs(out: Path) -> dict[str, dict]:
    docs = {}
    for path in sorted(out.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)  # raises when invalid
        docs[doc["metadata"]["labels"]["llem.dev/engine"]] = doc
    return docs


def test_one_valid_indexed_job_per_engine_with_gpus_from_the_experiments(tmp_path, mixed):
    done = run_llem("k8s", str(mixed), "--out", str(tmp_path / "k8s"), "--results-dir", str(tmp_path / "shared"),
                    "--pvc", "llem-results", "--mount-path", "/shared", "--model-cache-pvc", "hf-cache",
                    "--hf-token-secret", "hf", "--namespace", "energy",
                    "--image", "vllm=registry.local/llem/vllm:1")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    docs = jobs(tmp_path / "k8s")
    assert set(docs) == {"pytorch", "vllm"}
    (study_dir,) = (tmp_path / "shared").iterdir()
    for engine, doc in docs.items():
        spec = doc["spec"]
        assert spec["completionMode"] == "Indexed" and doc["metadata"]["namespace"] == "energy"
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        command = container["command"]
        assert command[:3] == ["llem", "worker", f"/shared/{study_dir.name}"]
        assert command[command.index("--engine") + 1] == engine and "--no-lock" in command
        security = container["securityContext"]
        assert security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"] == {"drop": ["ALL"]} and security["readOnlyRootFilesystem"]
        assert pod["automountServiceAccountToken"] is False
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"llem-results", "hf-cache"}
        token = [e for e in container["env"] if e["name"] == "HF_TOKEN"]
        assert token[0]["valueFrom"]["secretKeyRef"]["name"] == "hf"
        # The pod is told its own image, which its runs record they ran in (by digest where pinned).
        (own,) = [e["value"] for e in container["env"] if e["name"] == "LLEM_POD_IMAGE"]
        assert own == container["image"]
    assert docs["vllm"]["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/llem/vllm:1"
    gpus = {e: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
            for e, d in docs.items()}  # fmt: skip
    assert gpus == {"pytorch": 1, "vllm": 2}  # tensor_parallel_size 2 needs two GPUs in one pod
    manifest = ManifestStore.load(study_dir)
    assert len(manifest.runs) == 6 and {e.status for e in manifest.runs} == {"pending"}


def test_a_study_on_simulated_gpus_asks_for_them_as_gpus_and_its_pods_simulate_them(tmp_path, mixed):
    # LLEM_SIMULATE_GPUS is what --simulate-gpus sets: the limits are the real study's (one GPU for
    # pytorch, two for tensor_parallel_size 2), and every pod's worker is told the same simulation.
    spec = "2,reading=instant,fault=throttling@1"
    done = run_llem("k8s", str(mixed), "--out", str(tmp_path / "k8s"), "--results-dir", str(tmp_path / "r"),
                    "--pvc", "p", env={"LLEM_SIMULATE_GPUS": spec})  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    docs = jobs(tmp_path / "k8s")
    for doc in docs.values():
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        assert container["command"].count(f"--simulate-gpus={spec}") == 1
        assert doc["metadata"]["annotations"]["llem.dev/simulated-gpus"] == spec
    limits = {e: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] for e, d in docs.items()}
    assert {e: lim["nvidia.com/gpu"] for e, lim in limits.items()} == {"pytorch": 1, "vllm": 2}
    real = run_llem("k8s", str(mixed), "--out", str(tmp_path / "real"), "--results-dir", str(tmp_path / "r2"),
                    "--pvc", "p", env={"LLEM_SIMULATE_GPUS": ""})  # fmt: skip
    assert real.returncode == EXIT_OK, real.stderr
    for doc in jobs(tmp_path / "real").values():
        assert not any(p.startswith("--simulate") for p in doc["spec"]["template"]["spec"]["containers"][0]["command"])
        assert "llem.dev/simulated-gpus" not in doc["metadata"]["annotations"]


def test_cpu_pods_ask_for_no_gpus_and_a_missing_pvc_flag_is_one_line(tmp_path, mixed):
    done = run_llem("k8s", str(mixed), "--out", str(tmp_path / "k8s"), "--results-dir", str(tmp_path / "r"),
                    "--pvc", "p", "--cpu", "--pods", "2")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    for doc in jobs(tmp_path / "k8s").values():
        assert "nvidia.com/gpu" not in doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert doc["spec"]["parallelism"] == 2
    refused = run_llem("k8s", str(mixed), "--out", str(tmp_path / "k8s2"))
    assert refused.returncode == 2 and "--pvc" in refused.stderr and "Traceback" not in refused.stderr


def options(**overrides: object) -> K8sOptions:
    return K8sOptions(**({"results_pvc": "results", "mount_path": "/shared", "images": {"pytorch": "x:1"}} | overrides))  # type: ignore[arg-type]


def test_a_long_study_name_keeps_its_timestamp_and_a_replan_never_reuses_a_job_name():
    name = "a-very-long-study-name-that-goes-on-and-on-for-quite-a-while"  # 60 characters
    first, second = (Path(f"/shared/{name}_{stamp}") for stamp in ("20261201T101500Z", "20261201T111500Z"))
    a, b = job_name(first, "pytorch"), job_name(second, "pytorch")
    assert a != b  # was: both cut to the same 63 characters, so the second apply replaced the first Job
    assert a.endswith("-20261201t101500z-pytorch") and len(a) <= 63 and DNS_LABEL.fullmatch(a)
    assert job_name(Path("/shared/short_20261201T101500Z"), "vllm") == "llem-short-20261201t101500z-vllm"


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        ({"namespace": "Energy_Lab"}, "--namespace 'Energy_Lab': not a DNS label"),
        ({"results_pvc": "my pvc"}, "--pvc 'my pvc': not a Kubernetes object name"),
        ({"hf_token_secret": "HF"}, "--hf-token-secret 'HF'"),
        ({"mount_path": "/tmp"}, "the pod mounts /tmp itself"),
        ({"mount_path": "/dev"}, "the pod mounts /dev/shm itself"),
        ({"mount_path": "/"}, "the pod mounts /tmp itself"),
        ({"mount_path": "shared"}, "must be absolute"),
        ({"cpus": "four"}, "--cpus 'four': not a positive Kubernetes quantity"),
        ({"memory": "0Gi"}, "--memory '0Gi'"),
    ],
)
def test_names_paths_and_sizes_a_cluster_would_reject_are_one_line(overrides, said):
    with pytest.raises(ConfigError, match=re.escape(said)):
        options(**overrides)


def test_pods_are_guaranteed_qos_and_runs_that_fail_never_count_against_the_backoff(tmp_path, mixed):
    done = run_llem("k8s", str(mixed), "--out", str(tmp_path / "k8s"), "--results-dir", str(tmp_path / "r"),
                    "--pvc", "p", "--hf-token-secret", "hf")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    for doc in jobs(tmp_path / "k8s").values():  # strictly valid against the API schemas
        spec = doc["spec"]
        pod = spec["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        # Requests equal limits for CPU and memory: Guaranteed QoS (was: none, BestEffort, evicted first).
        assert resources["requests"] == {"cpu": "4", "memory": "16Gi"}
        assert {k: resources["limits"][k] for k in ("cpu", "memory")} == resources["requests"]
        rules = spec["podFailurePolicy"]["rules"]
        assert rules[0] == {
            "action": "Ignore",
            "onExitCodes": {"containerName": "worker", "operator": "In", "values": [1]},
        }
        assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [2, 3]
        assert spec["ttlSecondsAfterFinished"] == 7 * 24 * 3600
        assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
        (token,) = [e for e in pod["containers"][0]["env"] if e["name"] == "HF_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"]["optional"] is False  # a typo fails, never silently no token


def test_a_name_the_cluster_would_refuse_plans_nothing_and_sizes_come_from_flags(tmp_path, mixed):
    refused = run_llem("k8s", str(mixed), "--out", str(tmp_path / "k8s"), "--results-dir", str(tmp_path / "r"),
                       "--pvc", "p", "--namespace", "Energy_Lab")  # fmt: skip
    assert refused.returncode == 2 and "not a DNS label" in refused.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())  # was: planned, then refused
    done = run_llem("k8s", str(mixed), "--out", str(tmp_path / "k8s"), "--results-dir", str(tmp_path / "r"),
                    "--pvc", "p", "--cpus", "8", "--memory", "64Gi", "--timeout", "2")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    # The model is a directory of this host outside the pods' volume: said.
    assert "is a directory of this host, not on the pods' volume" in done.stderr
    for doc in jobs(tmp_path / "k8s").values():
        resources = doc["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"] == {"cpu": "8", "memory": "64Gi"}
        assert doc["spec"]["activeDeadlineSeconds"] == 7200


def test_llem_run_executor_k8s_writes_the_jobs_llem_k8s_writes_and_a_resume_writes_them_again(tmp_path, mixed):
    """issue 21: Kubernetes is an executor behind the one protocol; llem k8s is its own command."""
    flags = ["--pvc", "llem-results", "--mount-path", "/shared", "--namespace", "energy", "--pods", "3", "--cpu",
             "--memory", "8Gi", "--image", "vllm=registry.local/llem/vllm:1"]  # fmt: skip
    by_k8s = run_llem("k8s", str(mixed), "--out", str(tmp_path / "a"), "--results-dir", str(tmp_path / "ra"), *flags)
    assert by_k8s.returncode == EXIT_OK, by_k8s.stderr
    by_run = run_llem("run", str(mixed), "--executor", "k8s", "--out", str(tmp_path / "b"),
                      "--results-dir", str(tmp_path / "rb"), *flags)  # fmt: skip
    assert by_run.returncode == EXIT_OK, by_run.stderr
    (dir_a,), (dir_b,) = (tmp_path / "ra").iterdir(), (tmp_path / "rb").iterdir()
    a, b = jobs(tmp_path / "a"), jobs(tmp_path / "b")
    assert set(a) == set(b) == {"pytorch", "vllm"}
    for engine in a:
        pod_a, pod_b = (d[engine]["spec"]["template"]["spec"] for d in (a, b))
        (container_a,), (container_b,) = pod_a["containers"], pod_b["containers"]
        assert container_b["command"][2] == f"/shared/{dir_b.name}"
        assert container_a["command"][3:] == container_b["command"][3:]  # the same worker, the same flags
        assert container_b["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"},
                                            "limits": {"cpu": "4", "memory": "8Gi"}}  # fmt: skip
        assert container_a["resources"] == container_b["resources"] and container_a["image"] == container_b["image"]
        assert b[engine]["spec"]["parallelism"] == 3 and b[engine]["metadata"]["namespace"] == "energy"
    assert ManifestStore.load(dir_a).runs == ManifestStore.load(dir_b).runs  # the same plan, all pending
    assert by_run.stdout.split() == sorted(str(p) for p in (tmp_path / "b").glob("*.yaml"))
    # A resume of the study writes the Jobs again for what is left, into the same study directory.
    again = run_llem("run", str(mixed), "--executor", "k8s", "--resume-dir", str(dir_b), "--out", str(tmp_path / "c"),
                     "--results-dir", str(tmp_path / "rb"), *flags)  # fmt: skip
    assert again.returncode == EXIT_OK, again.stderr
    assert list((tmp_path / "rb").iterdir()) == [dir_b]
    assert {d["spec"]["template"]["spec"]["containers"][0]["command"][2] for d in jobs(tmp_path / "c").values()} == {
        f"/shared/{dir_b.name}"
    }


def test_the_run_options_llem_run_was_given_reach_the_pods_workers(tmp_path, mixed):
    done = run_llem("run", str(mixed), "--executor", "k8s", "--out", str(tmp_path / "k8s"), "--pvc", "p",
                    "--results-dir", str(tmp_path / "shared"), "--run-timeout", "120", "--stall-timeout", "90",
                    "--fail-fast", "--lock-dir", str(tmp_path / "locks"))  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    for doc in jobs(tmp_path / "k8s").values():
        command = doc["spec"]["template"]["spec"]["containers"][0]["command"]
        assert {"--run-timeout=120.0", "--stall-timeout=90.0", "--fail-fast"} <= set(command)
        assert not any(c.startswith("--lock-dir") for c in command)  # a pod takes no locks (--no-lock)
        assert command.count("--runner") == 1 and command[command.index("--runner") + 1] == "local"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--pvc", "p"], "--pvc goes with --executor k8s"),
        (["--executor", "slurm", "--out", "o"], "--out goes with --executor k8s"),
        (["--executor", "k8s", "--pvc", "p"], "--executor k8s writes the Jobs: it needs --out DIR and --pvc NAME"),
        (["--executor", "k8s", "--out", "o", "--pvc", "p", "--parallel", "2"], "the Jobs' pods per engine are --pods"),
        (["--executor", "k8s", "--out", "o", "--pvc", "p", "--dry-run"], "--executor k8s writes the Jobs (run it"),
    ],
)
def test_kubernetes_flags_without_the_k8s_executor_or_missing_from_it_are_one_line(tmp_path, mixed, argv, said):
    from llem.errors import EXIT_CONFIG
    from tests.unit.test_cli import assert_one_line_error

    proc = run_llem("run", str(mixed), "--results-dir", str(tmp_path / "r"), *argv)
    assert_one_line_error(proc, EXIT_CONFIG, said)
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()  # nothing planned, nothing written


class HostImages:
    """The docker runner as ``llem k8s`` asks it (describe: labels, registry digests) over the
    images this host has; another is not found."""

    def __init__(self, images: dict[str, dict]) -> None:
        self.images = images

    def __call__(self) -> HostImages:  # DockerRunner()
        return self

    def describe(self, refs):
        from llem.errors import EnvironmentProblem

        refs = sorted(set(refs))
        missing = [r for r in refs if r not in self.images]
        if missing:
            raise EnvironmentProblem(f"cannot describe the Docker engine or images: {missing[0]} not found")
        return {}, {r: self.images[r] for r in refs}


WORKER_DIGEST = "llem/pytorch-worker@sha256:" + "f" * 64


@pytest.fixture
def host_images(monkeypatch: pytest.MonkeyPatch) -> None:
    from llem import docker_runner

    agent = {"id": "sha256:1", "repo_digests": [], "labels": {"io.llem.engine": "pytorch"}}
    worker = {"id": "sha256:2", "repo_digests": [WORKER_DIGEST],
              "labels": {"io.llem.worker": "true", "io.llem.engine-image": "llem/pytorch:t"}}  # fmt: skip
    monkeypatch.setattr(docker_runner, "DockerRunner", HostImages({"llem/pytorch:t": agent,
                                                                   "llem/pytorch-worker:t": worker}))  # fmt: skip


def _k8s(tmp_path: Path, study_file: Path, image: str) -> int:
    from llem.cli import main

    return main(["k8s", str(study_file), "--out", str(tmp_path / "k8s"), "--results-dir", str(tmp_path / "r"),
                 "--pvc", "p", "--image", f"pytorch={image}"])  # fmt: skip


def test_an_agent_image_this_host_has_is_refused_as_the_pods_image(tmp_path, study_file, host_images, capsys):
    from llem.errors import EXIT_CONFIG

    assert _k8s(tmp_path, study_file, "llem/pytorch:t") == EXIT_CONFIG  # was: Jobs whose every run fails
    err = capsys.readouterr().err
    assert err == (
        "llem: error: the pytorch pods' image llem/pytorch:t is not llem's worker image (no io.llem.worker=true "
        "label; an agent image has no `llem worker`, the pods' command): give the worker image built from it "
        "(images/worker/Dockerfile with --build-arg ENGINE_IMAGE=llem/pytorch:t; `make images` builds the pytorch "
        "one)\n"
    )
    assert not (tmp_path / "r").exists() and not (tmp_path / "k8s").exists()  # nothing planned, nothing written


def test_a_worker_image_this_host_has_is_pinned_and_one_it_lacks_kept_by_tag(tmp_path, study_file, host_images, capsys):
    assert _k8s(tmp_path, study_file, "llem/pytorch-worker:t") == EXIT_OK
    (job,) = jobs(tmp_path / "k8s").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == WORKER_DIGEST
    # Not on this host: nothing to inspect, so taken as given (by tag, said), as before.
    assert _k8s(tmp_path / "elsewhere", study_file, "registry.example/llem/pytorch-worker:t") == EXIT_OK
    (job,) = jobs(tmp_path / "elsewhere" / "k8s").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/llem/pytorch-worker:t"
    assert "no registry digest on this host, the Jobs name it by tag" in capsys.readouterr().err


def test_a_job_without_a_wall_clock_limit_still_has_a_deadline_every_run_at_its_timeout(tmp_path, mixed):
    """issue 23 s3: no study limit and no --timeout used to leave the Jobs without activeDeadlineSeconds,
    so a pod hung outside any run kept its Job (and GPUs) for ever. The bound: 6 runs (3 experiments
    x 2 cycles), each at its --run-timeout of 100 s after the longest pause (300 s, a GPU machine's
    cycle gap, above the breaker's 60 s cooldown) and 600 s more: 6 x 1,000 s."""
    flags = ["--executor", "k8s", "--pvc", "p", "--run-timeout", "100"]
    done = run_llem("run", str(mixed), "--out", str(tmp_path / "a"), "--results-dir", str(tmp_path / "ra"), *flags)
    assert done.returncode == EXIT_OK, done.stderr
    assert {doc["spec"]["activeDeadlineSeconds"] for doc in jobs(tmp_path / "a").values()} == {6000}
    # A study's own longer pause counts instead: 6 x (100 + 1,000 + 600) s.
    paused = tmp_path / "paused.yaml"
    paused.write_text(MIXED.replace("{n_cycles: 2}", "{n_cycles: 2, cycle_gap_seconds: 1000}"))
    done = run_llem("run", str(paused), "--out", str(tmp_path / "b"), "--results-dir", str(tmp_path / "rb"), *flags)
    assert done.returncode == EXIT_OK, done.stderr
    assert {doc["spec"]["activeDeadlineSeconds"] for doc in jobs(tmp_path / "b").values()} == {10200}
    # llem k8s: the pods' workers' default run timeout, 3,600 s: 6 x (3,600 + 300 + 600) s.
    done = run_llem(
        "k8s", str(mixed), "--out", str(tmp_path / "c"), "--results-dir", str(tmp_path / "rc"), "--pvc", "p"
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert {doc["spec"]["activeDeadlineSeconds"] for doc in jobs(tmp_path / "c").values()} == {27000}
