"""Kubernetes Indexed Jobs whose pods run ``llem worker`` on a study directory on a volume.

No cluster scheduler of llem's own: the Job's pods are the workers, the study's claims
(:mod:`orchestrator.claims`) make sure each run runs once, and a pod that dies leaves its run
claimable again. A pod is the run's container, so the worker runs the agent in-process
(``--runner local``) and takes no device locks: the device plugin gives each pod its own GPUs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator import __version__
from orchestrator.container import NONROOT
from orchestrator.devices import devices_needed
from orchestrator.plan import Plan

LABEL_PREFIX = "llem.dev"
HF_MOUNT = "/llem/hf"


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


def jobs(study_dir: Path, plan: Plan, options: K8sOptions, worker_flags: Sequence[str]) -> list[dict[str, Any]]:
    """One Indexed Job per engine of the study (a pod runs one engine image)."""
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
    name = f"llem-{_name(study_dir.name)}-{engine}"[:63].rstrip("-")
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
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": options.hf_token_secret, "key": "HF_TOKEN", "optional": True}}})  # fmt: skip
    resources: dict[str, Any] = {"limits": {"nvidia.com/gpu": gpus}} if gpus else {}
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
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"fsGroup": 0, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }  # fmt: skip
    if options.namespace:
        job["metadata"]["namespace"] = options.namespace
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
