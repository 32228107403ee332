"""Kubernetes Indexed Jobs whose pods run ``llem worker`` on a study directory on a volume.

No cluster scheduler of llem's own: the Job's pods are the workers, the study's claims
(:mod:`orchestrator.claims`) make sure each run runs once, and a pod that dies leaves its run
claimable again. A pod is the run's container, so the worker runs the agent in-process
(``--runner local``) and takes no device locks: the device plugin gives each pod its own GPUs.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .container import NONROOT, POD_IMAGE_ENV
from .devices import devices_needed
from .errors import ConfigError
from .plan import Plan
from .simulation import SIMULATE_ENV
from .userconfig import DEFAULT_CONFIG_GAP_S, DEFAULT_CYCLE_GAP_S

LABEL_PREFIX = "llem.dev"
HF_MOUNT = "/llem/hf"
# Paths the pod mounts itself: the results volume may not land on (or above) one of them.
POD_MOUNTS = ("/tmp", "/dev/shm", HF_MOUNT)
# A finished Job (and its pods' logs) is kept this long, then Kubernetes removes it.
TTL_AFTER_FINISHED_S = 7 * 24 * 3600
# Per run, on top of its timeout and the longest pause: a container's start, a model's download.
DEADLINE_SLACK_PER_RUN_S = 600


def default_deadline_s(plan: Plan, run_timeout_s: float) -> int:
    """activeDeadlineSeconds where the study sets no wall-clock limit: one pod running every run
    to its timeout, with the longest pause and 10 minutes more before each. A Job that makes
    progress never reaches it (each run is stopped at its timeout); a pod hung outside any run
    (a stuck volume, a wedged kubelet) cannot keep its Job, and its GPUs, for ever. The longest
    pause: the study's gaps between runs and cycles, else a GPU machine's defaults (a pod has no
    user config), and the circuit breaker's cooldown."""
    execution = plan.study.execution
    gaps = [g for g in (execution.config_gap_seconds, execution.cycle_gap_seconds) if g is not None]
    pause = max([DEFAULT_CONFIG_GAP_S, DEFAULT_CYCLE_GAP_S, execution.circuit_breaker_cooldown_seconds, *gaps])
    return max(1, round(len(plan.runs) * (run_timeout_s + pause + DEADLINE_SLACK_PER_RUN_S)))


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Kubernetes resource quantities: 4, 500m, 16Gi, 1.5G, ...
QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


@dataclass(frozen=True)
class K8sOptions:
    results_pvc: str  # the PersistentVolumeClaim the study directory lives on
    mount_path: str  # where pods mount it (the study directory's path must be the same there)
    images: dict[str, str]
    namespace: str | None = None
    model_cache_pvc: str | None = None  # Hugging Face cache shared by the pods (HF_HOME)
    hf_token_secret: str | None = None  # a Secret with key HF_TOKEN
    pods: int | None = None  # parallelism per engine; default: one per run, at most 8
    gpus: bool = True  # nvidia.com/gpu limits from the experiments (False: CPU pods)
    cpus: str = "4"  # CPU and memory requests = limits: Guaranteed QoS, never evicted first
    memory: str = "16Gi"
    deadline_s: int | None = None  # activeDeadlineSeconds: the study's wall-clock limit

    def __post_init__(self) -> None:
        """Names and paths a cluster would reject or misread, refused in one line each."""
        if self.namespace is not None and not DNS_LABEL.fullmatch(self.namespace):
            raise ConfigError(f"--namespace {self.namespace!r}: not a DNS label (lower-case a-z, 0-9, '-', <= 63)")
        for flag, name in (("--pvc", self.results_pvc), ("--model-cache-pvc", self.model_cache_pvc),
                           ("--hf-token-secret", self.hf_token_secret)):  # fmt: skip
            if name is not None and not DNS_SUBDOMAIN.fullmatch(name):
                raise ConfigError(f"{flag} {name!r}: not a Kubernetes object name (lower-case a-z, 0-9, '-', '.')")
        path = self.mount_path.rstrip("/") or "/"
        if not path.startswith("/"):
            raise ConfigError(f"--mount-path must be absolute, got {self.mount_path!r}")
        for taken in POD_MOUNTS:
            if path == taken or taken.startswith(path + "/") or path == "/":  # below one is a nested mount: fine
                raise ConfigError(f"--mount-path {self.mount_path}: the pod mounts {taken} itself; choose another path")
        for flag, value in (("--cpus", self.cpus), ("--memory", self.memory)):
            if not QUANTITY.fullmatch(value) or float(re.sub(r"[A-Za-z]+$", "", value)) <= 0:
                raise ConfigError(f"{flag} {value!r}: not a positive Kubernetes quantity (e.g. 4, 500m, 16Gi)")


def worker_image(ref: str) -> str:
    """The worker image of an engine image (images/worker): ``.../llem/pytorch:V`` -> ``.../llem/pytorch-worker:V``."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:  # no tag (a registry port is not one)
        return ref + "-worker"
    return f"{name}-worker:{tag}"


def _name(text: str) -> str:
    """A DNS-1123 label from ``text``."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return cleaned[:50].strip("-") or "study"


def job_name(study_dir: Path, engine: str) -> str:
    """``llem-<study>-<engine>`` within 63 characters, unique per study directory: a long study
    name is cut, never its timestamp, and a cut name carries a hash of the directory's name, so
    a replan of the same study never overwrites the Job of an earlier one."""
    full = f"llem-{re.sub(r'[^a-z0-9-]+', '-', study_dir.name.lower()).strip('-')}-{engine}"
    if len(full) <= 63:
        return full
    stem, _, stamp = study_dir.name.rpartition("_")
    digest = hashlib.sha256(study_dir.name.encode()).hexdigest()[:6]
    tail = f"-{digest}-{_name(stamp)}-{engine}"
    return f"llem-{_name(stem)[: 63 - len('llem-') - len(tail)].strip('-')}{tail}"


def jobs(study_dir: Path, plan: Plan, options: K8sOptions, worker_flags: Sequence[str]) -> list[dict[str, Any]]:
    """One Indexed Job per engine of the study (a pod runs one engine image).

    A study planned on simulated GPUs (``LLEM_SIMULATE_GPUS``, as ``--simulate-gpus`` sets it)
    asks for ``nvidia.com/gpu`` as a real one does (they are GPUs to every seam), and its workers
    are told the same simulation (``--simulate-gpus``, said in an annotation too): a cluster
    without GPUs runs them with ``--cpu``, which drops the limits."""
    simulated = os.environ.get(SIMULATE_ENV, "").strip()
    if simulated and not any(f.startswith("--simulate-gpus") for f in worker_flags):
        worker_flags = [*worker_flags, f"--simulate-gpus={simulated}"]
    out = []
    needs: dict[str, int] = {}
    for exp in plan.study.experiments:
        needs[exp.config.engine] = max(needs.get(exp.config.engine, 0), devices_needed(exp.config))
    runs_per_engine = {e: sum(1 for r in plan.runs if r.experiment.config.engine == e) for e in needs}
    for engine, most in sorted(needs.items()):
        gpus = most if options.gpus else 0
        pods = options.pods or max(1, min(runs_per_engine[engine], 8))
        out.append(_job(study_dir, plan, options, engine, (gpus, pods), flags=worker_flags))
    return out


def _job(
    study_dir: Path, plan: Plan, options: K8sOptions, engine: str, size: tuple[int, int], *, flags: Sequence[str]
) -> dict[str, Any]:
    gpus, pods = size
    name = job_name(study_dir, engine)
    labels = {f"{LABEL_PREFIX}/study": _name(plan.study.name), f"{LABEL_PREFIX}/engine": engine}
    command = ["llem", "worker", str(study_dir), "--runner", "local", "--no-lock", "--engine", engine,
               "--worker-id", "$(POD_NAME)", *flags]  # fmt: skip
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "results", "persistentVolumeClaim": {"claimName": options.results_pvc}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "results", "mountPath": options.mount_path},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    if options.model_cache_pvc:
        volumes.append({"name": "hf", "persistentVolumeClaim": {"claimName": options.model_cache_pvc}})
        mounts.append({"name": "hf", "mountPath": HF_MOUNT})
        env.append({"name": "HF_HOME", "value": HF_MOUNT})
    if options.hf_token_secret:  # the worker hands it to the agent as a file, only for runs that may download
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {  # a typo fails the pod, never no token
            "name": options.hf_token_secret, "key": "HF_TOKEN", "optional": False}}})  # fmt: skip
    # Requests = limits (Guaranteed QoS): measured pods are the last evicted and get whole cores.
    sized = {"cpu": options.cpus, "memory": options.memory}
    limits: dict[str, Any] = sized | ({"nvidia.com/gpu": gpus} if gpus else {})
    resources: dict[str, Any] = {"requests": dict(sized), "limits": limits}
    env.append({"name": POD_IMAGE_ENV, "value": options.images[engine]})  # what its runs record they ran in
    container = {
        "name": "worker",
        "image": options.images[engine],
        "command": command,
        "env": env,
        "volumeMounts": mounts,
        "resources": resources,
        "securityContext": {  # as strict as the Docker runs: no root, no new privileges, no capabilities
            "runAsNonRoot": True,
            "runAsUser": int(NONROOT.partition(":")[0]),
            "runAsGroup": 0,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels, "annotations": {
            f"{LABEL_PREFIX}/study-dir": str(study_dir), f"{LABEL_PREFIX}/version": __version__}},
        "spec": {
            "completionMode": "Indexed",
            "completions": pods,
            "parallelism": pods,
            "backoffLimit": pods,  # a failed pod's run is claimed again by the next one
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            # A worker exits 1 when a run it measured failed (the manifest says which): that is the
            # study's outcome, not the pod's, and must never count toward backoffLimit (which, once
            # exceeded, kills healthy pods mid-measurement). A refused config or environment (exit
            # 2 or 3) fails every pod alike: fail the Job at once. Evictions and preemptions retry.
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [1]}},
                {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2, 3]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"fsGroup": 0, "fsGroupChangePolicy": "OnRootMismatch",
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }  # fmt: skip
    if options.namespace:
        job["metadata"]["namespace"] = options.namespace
    if options.deadline_s:
        job["spec"]["activeDeadlineSeconds"] = options.deadline_s
    simulated = next((f.partition("=")[2] for f in flags if f.startswith("--simulate-gpus=")), None)
    if simulated:
        job["metadata"]["annotations"][f"{LABEL_PREFIX}/simulated-gpus"] = simulated
    return job


def write(out_dir: Path, documents: Sequence[dict[str, Any]]) -> list[Path]:
    """One YAML file per Job; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for doc in documents:
        path = out_dir / f"{doc['metadata']['name']}.yaml"
        path.write_text(
            "# Written by llem " + __version__ + ": kubectl apply -f " + path.name + "\n"
            + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8",
        )  # fmt: skip
        paths.append(path)
    return paths
