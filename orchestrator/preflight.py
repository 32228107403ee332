"""Everything that can fail before a study directory exists, checked before any run: the
settings, each experiment's model, adapter, prebuilt engine and prompt files, the images, the
agent extras the images were built with, and (with --no-wait) that the devices are free."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llem_agent.contract import refusal_reason, unsupported_by_agent

from . import __version__
from .datasets import resolve_dataset
from .devices import assign_devices
from .errors import ConfigError, EnvironmentProblem
from .execution import HostSettings
from .locks import DeviceLocks, lock_names
from .models import (
    check_hf_cache_writable,
    check_readable_by_agent,
    resolve_adapter_dir,
    resolve_model_dir,
    resolve_trt_engine_dir,
)
from .onerun import image_for
from .plan import Plan
from .runner import Runner

LABEL_EXTRAS = "io.llem.agent-extras"  # the agent extras an image was built with (Dockerfiles)
RunnerFor = Callable[[str], Runner]


@dataclass
class Found:
    """What the preflight found for each experiment (by index), which its runs mount: a local
    model directory (None: a hub model), a local adapter, a prebuilt engine, a prompt file."""

    model_dirs: dict[int, Path | None] = field(default_factory=dict)
    adapter_dirs: dict[int, Path | None] = field(default_factory=dict)
    engine_dirs: dict[int, Path | None] = field(default_factory=dict)
    datasets: dict[int, Path | None] = field(default_factory=dict)


def preflight(plan: Plan, options: HostSettings, runner_for: RunnerFor, here: bool = True) -> Found:
    """Everything that can fail before a results directory exists: settings, models, images, Docker.

    ``here=False`` (a study other hosts will run: Slurm, Kubernetes): the settings and the
    model and prompt files only; each worker checks its own devices and images.
    """
    found = Found()
    base = plan.study.base_dir
    for exp in plan.study.experiments:
        refused = unsupported_by_agent(exp.config, exp.config.engine)
        if refused == ["engine"]:
            raise ConfigError(f"engine '{exp.config.engine}' has no agent in llem {__version__} yet")
        if refused:
            engine = exp.config.engine
            raise ConfigError(
                f"experiment {exp.index + 1}: the {engine} agent of llem {__version__} does not apply "
                f"{', '.join(refusal_reason(engine, p) for p in refused)}; remove it rather than get results "
                "that ignore it"
            )
        model_dir = found.model_dirs[exp.index] = resolve_model_dir(exp.config.model, base)
        if model_dir is not None:
            check_readable_by_agent(model_dir, os.getuid())
        adapter_dir = found.adapter_dirs[exp.index] = resolve_adapter_dir(exp.config, base)
        if adapter_dir is not None:
            check_readable_by_agent(adapter_dir, os.getuid())
        dataset = found.datasets[exp.index] = resolve_dataset(exp.config, base)
        if dataset is not None:
            check_readable_by_agent(dataset.parent, os.getuid(), only=dataset)
        engine_dir = found.engine_dirs[exp.index] = resolve_trt_engine_dir(exp.config, base)
        if engine_dir is not None:
            check_readable_by_agent(engine_dir, os.getuid())
        if here:
            assign_devices(exp.config, list(options.gpu_indices))  # raises when too few GPUs
    hub_models = sorted({e.config.model for e in plan.study.experiments if found.model_dirs[e.index] is None})
    if hub_models:  # downloads land in the mounted cache, written by the agent's uid
        check_hf_cache_writable(options.hf_home, os.getuid(), hub_models[0])
    if not here:
        return found
    for engine_name, images in images_by_engine(plan, options).items():
        runner_for(engine_name).check(images)
    _check_extras(plan, options, runner_for)
    _check_devices_free(plan, options)
    return found


def _check_devices_free(plan: Plan, options: HostSettings) -> None:
    """With --no-wait a locked device ends the study: find out before a study directory exists."""
    lock_dir = options.lock_dir
    if lock_dir is None or options.lock_wait_s != 0:
        return
    names = sorted(
        {
            n
            for e in plan.study.experiments
            for n in lock_names(
                assign_devices(e.config, list(options.gpu_indices)), options.cpuset, options.simulation is not None
            )
        }
    )
    probe = DeviceLocks(names, lock_dir)
    if not probe.try_acquire():
        raise EnvironmentProblem(
            f"devices {names} are locked by another study (lock files in {lock_dir}); "
            "wait for it, or run without --no-wait to queue behind it"
        )
    probe.release()


def images_by_engine(plan: Plan, options: HostSettings) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for exp in plan.study.experiments:
        out.setdefault(exp.config.engine, set()).add(image_for(exp.config.engine, options.images))
    return out


def describe(
    images_by_engine: dict[str, set[str]], runner_for: RunnerFor
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """What each engine's runner says about itself and its images (for host.json)."""
    server: dict[str, dict[str, Any]] = {}
    images: dict[str, dict[str, Any]] = {}
    runners: dict[str, str] = {}
    for engine, refs in sorted(images_by_engine.items()):
        runner = runner_for(engine)
        runners[engine] = runner.kind
        facts, described = runner.describe(refs)
        server.setdefault(runner.kind, facts)
        images |= described
    return {**server.get("docker", server.get("local", {})), "runners": runners}, images


def _check_extras(plan: Plan, options: HostSettings, runner_for: RunnerFor) -> None:
    """energy_sampler zeus/codecarbon needs an image built with that agent extra; images
    say which they have in a label (an image without the label is left to the agent)."""
    needs: dict[str, dict[str, int]] = {}
    for exp in plan.study.experiments:
        if exp.config.energy_sampler in ("zeus", "codecarbon"):
            image = image_for(exp.config.engine, options.images)
            needs.setdefault(image, {})[exp.config.energy_sampler] = exp.index
    if not needs:
        return
    described: dict[str, dict[str, Any]] = {}
    for exp in plan.study.experiments:
        image = image_for(exp.config.engine, options.images)
        if image in needs and image not in described:
            described |= runner_for(exp.config.engine).describe({image})[1]
    for image, wanted in needs.items():
        labels = (described.get(image) or {}).get("labels") or {}
        if LABEL_EXTRAS not in labels:
            continue
        have = {x.strip() for x in str(labels[LABEL_EXTRAS]).split(",") if x.strip()}
        for extra, index in wanted.items():
            if extra not in have:
                raise ConfigError(
                    f"experiment {index + 1}: energy_sampler {extra} needs an image built with "
                    f"--build-arg AGENT_EXTRAS={extra}; {image} has {', '.join(sorted(have)) or 'no extras'}"
                )
