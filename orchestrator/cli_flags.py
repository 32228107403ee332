"""The flags of where and how runs execute (``llem run`` and ``llem worker`` share them), and
those flags as the API's :class:`~.options.Options`: the command line's one translation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .container import DEFAULT_PIDS_LIMIT
from .locks import DEFAULT_LOCK_DIR
from .options import Failures, Options
from .runners import RUNNER_KINDS
from .session import parse_images
from .study import MAX_EXPERIMENTS, MAX_RUNS


def host_options(parser: argparse.ArgumentParser) -> None:
    """Options of where and how runs execute: ``llem run`` and ``llem worker`` share them."""
    parser.add_argument(
        "--no-pull", action="store_true", help="refuse an image that is not on this host instead of pulling it"
    )
    parser.add_argument("--image", action="append", default=[], metavar="ENGINE=IMAGE", help="image for an engine")
    parser.add_argument(
        "--runner",
        choices=RUNNER_KINDS,
        help="where every engine's runs execute: docker (one container per run) or local (a host process); "
        "LLEM_RUNNER_<ENGINE> and the user config's runners: win over it, it wins over the study's runners:",
    )
    parser.add_argument(
        "--gpus",
        help="GPUs the study may use, by NVML index or UUID, e.g. 0,1 or GPU-5c1e... (default: every GPU "
        "this process was given: CUDA_VISIBLE_DEVICES, else all NVML sees)",
    )
    parser.add_argument(
        "--simulate-gpus", metavar="N[,KEY=VALUE...]",
        help="run on N SIMULATED GPUs instead of real ones (labelled everywhere; never a measurement): their power "
        "profile and faults after the number, e.g. 1,reading=instant,fault=counter_reset@1 (README: Simulated GPUs); "
        "sets LLEM_SIMULATE_GPUS for this command and every worker it starts",
    )  # fmt: skip
    parser.add_argument("--run-timeout", type=float, default=3600.0, metavar="S", help="per-run timeout in seconds")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="kill a run whose agent shows no progress for S seconds while measuring (default 600)",
    )
    parser.add_argument(
        "--sample-interval",
        type=float,
        default=0.1,
        metavar="S",
        help="GPU telemetry sampling interval in seconds (default 0.1 = 10 Hz)",
    )
    parser.add_argument(
        "--container-memory", metavar="SIZE",
        help="memory limit of each run's container, e.g. 16g, or none (default: 90%% of this host's memory)",
    )  # fmt: skip
    parser.add_argument(
        "--pids-limit", type=int, default=DEFAULT_PIDS_LIMIT, metavar="N",
        help=f"processes and threads per run container, 0 for no limit (default {DEFAULT_PIDS_LIMIT})",
    )  # fmt: skip
    parser.add_argument("--lock-dir", default=str(DEFAULT_LOCK_DIR), help="directory of the device lock files")
    parser.add_argument("--no-lock", action="store_true", help="take no device locks (scheduling is done elsewhere)")
    parser.add_argument(
        "--no-wait", action="store_true", help="fail at once when a device is locked, instead of waiting"
    )
    breaker = parser.add_mutually_exclusive_group()
    breaker.add_argument("--fail-fast", action="store_true", help="stop the study at the first failed run")
    breaker.add_argument("--no-circuit-breaker", action="store_true", help="never stop the study for failures")
    parser.add_argument("--timeout", type=float, metavar="HOURS", help="wall-clock limit of the whole study")


def options_from_args(args: argparse.Namespace) -> Options:
    """The options a command's flags ask for (a command without a flag leaves its default)."""

    def flag(name: str, default: Any = None) -> Any:
        return getattr(args, name, default)

    failures: Failures = "fail_fast" if flag("fail_fast") else "never" if flag("no_circuit_breaker") else "breaker"
    results_dir, resume_dir = flag("results_dir"), flag("resume_dir")
    return Options(
        results_dir=Path(str(results_dir)) if results_dir else None,
        name=flag("name"),
        cycles=flag("cycles"),
        order=flag("order"),
        images=parse_images(flag("image", []) or []),
        runner=flag("runner"),
        gpus=flag("gpus"),
        run_timeout_s=flag("run_timeout", 3600.0),
        stall_timeout_s=flag("stall_timeout", 600.0),
        sample_interval_s=flag("sample_interval", 0.1),
        container_memory=flag("container_memory"),
        pids_limit=flag("pids_limit", DEFAULT_PIDS_LIMIT),
        lock_dir=None if flag("no_lock") else Path(str(flag("lock_dir", DEFAULT_LOCK_DIR))),
        wait_for_devices=not flag("no_wait"),
        failures=failures,
        timeout_hours=flag("timeout"),
        pull=not flag("no_pull"),
        resume=bool(flag("resume")),
        resume_dir=Path(str(resume_dir)) if resume_dir else None,
        max_experiments=flag("max_experiments", MAX_EXPERIMENTS),
        max_runs=flag("max_runs", MAX_RUNS),
        profile=flag("profile"),
    )


K8S_FLAGS = ("out", "pvc", "mount_path", "model_cache_pvc", "hf_token_secret", "namespace", "pods", "cpu", "cpus",
             "memory")  # fmt: skip


def k8s_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, required: bool) -> None:
    """The Kubernetes executor's flags: ``llem k8s`` and ``llem run --executor k8s`` share them
    (in ``llem run`` they default to None, so that one given without ``--executor k8s`` is seen)."""
    parser.add_argument("--out", required=required, metavar="DIR", help="where to write the Job manifests")
    parser.add_argument("--pvc", required=required, metavar="NAME", help="PersistentVolumeClaim holding --results-dir")
    parser.add_argument(
        "--mount-path", metavar="PATH", help="where pods mount it (default: --results-dir's absolute path)"
    )
    parser.add_argument(
        "--model-cache-pvc", metavar="NAME", help="PersistentVolumeClaim of a shared Hugging Face cache"
    )
    parser.add_argument(
        "--hf-token-secret", metavar="NAME", help="a Secret whose key HF_TOKEN the runs may download with"
    )
    parser.add_argument("--namespace", metavar="NS", help="metadata.namespace of the Jobs")
    parser.add_argument("--pods", type=int, metavar="N", help="pods per engine; default: one per run, at most 8")
    parser.add_argument("--cpu", action="store_true", default=None, help="CPU pods: no nvidia.com/gpu limits")
    parser.add_argument("--cpus", metavar="N", help="CPU each pod requests = its limit (default 4)")
    parser.add_argument("--memory", metavar="SIZE", help="memory each pod requests = its limit (default 16Gi)")
