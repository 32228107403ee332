"""``llem doctor``: is this machine ready to run studies? Each check says how to fix what fails."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llem_agent.contract import DEFAULT_ENGINE, ENGINE_SECTIONS, ENGINES, contract_fingerprint

from .devices import nvml_gpus
from .errors import LlemError

Status = Literal["ok", "warn", "fail"]
GIB = 2**30
DISK_FAIL_GIB = 1.0
DISK_WARN_GIB = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_check(name: str, path: Path, setting: str) -> Check:
    """Free space under ``path`` (or its nearest existing parent), and that llem can write there."""
    where = _existing_parent(path)
    free_gib = shutil.disk_usage(where).free / GIB
    detail = f"{path}: {free_gib:,.1f} GiB free"
    fix = f"free space there, or point {setting} at a bigger disk (llem config shows where it is set)"
    if not os.access(where, os.W_OK):
        return Check(name, "fail", f"{path}: {where} is not writable", f"make it writable or change {setting}")
    if free_gib < DISK_FAIL_GIB:
        return Check(name, "fail", detail, fix)
    if free_gib < DISK_WARN_GIB:
        return Check(name, "warn", detail, fix)
    return Check(name, "ok", detail)


def nvidia_support(info: dict[str, Any]) -> str | None:
    """How this Docker engine gives containers NVIDIA GPUs, or None. The nvidia runtime, or a CDI
    spec for ``nvidia.com/gpu`` (``nvidia-ctk cdi generate``). ``CDISpecDirs`` alone proves
    nothing: every Docker 25+ reports its default directories, with or without a spec in them."""
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    if "nvidia" in runtimes:
        return f"runtimes: {', '.join(runtimes)}"
    for directory in info.get("CDISpecDirs") or []:
        for spec in sorted(Path(directory).glob("*")):
            if spec.suffix in (".yaml", ".yml", ".json"):
                try:
                    text = spec.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                if "nvidia.com/gpu" in text:
                    return f"CDI spec {spec}"
    return None


def run_checks(required_engines: Sequence[str] = (DEFAULT_ENGINE,), results_dir: Path | None = None) -> list[Check]:
    from .docker_runner import DockerRunner
    from .userconfig import load_user_config

    checks: list[Check] = []
    try:
        user = load_user_config()
    except LlemError as exc:
        return [Check("user config", "fail", str(exc), "fix the file, or set LLEM_CONFIG to another one")]
    checks.append(Check("user config", "ok", f"{user.path}" + ("" if user.file_found else " (absent: defaults)")))

    gpus, why_none = nvml_gpus()
    simulated = any(g.simulated for g in gpus)  # LLEM_SIMULATE_GPUS: no real GPU, no NVIDIA runtime needed
    if gpus:
        what = "GPUs (SIMULATED: LLEM_SIMULATE_GPUS)" if simulated else "GPUs (NVML)"
        checks.append(Check(what, "ok", ", ".join(f"{g.index}: {g.name}" for g in gpus)))
    else:
        checks.append(
            Check(
                "GPUs (NVML)",
                "warn",
                f"none ({why_none}); runs use the CPU and measure no energy",
                "install the NVIDIA driver (nvidia-smi must list the GPUs) to measure energy",
            )
        )

    runner = DockerRunner()
    try:
        version, info = runner.server()
        detail = f"Docker {version.get('Version')} (API {version.get('ApiVersion')})"
        checks.append(Check("Docker daemon", "ok", detail))
    except LlemError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        checks.append(
            Check(
                "Docker daemon",
                "fail",
                message,
                "start Docker (`make docker-engine` installs and starts one on Debian), or set DOCKER_HOST",
            )
        )
        info = None
    if info is not None:
        runtimes = sorted((info.get("Runtimes") or {}).keys())
        nvidia = nvidia_support(info)
        if nvidia:
            checks.append(Check("NVIDIA container runtime", "ok", nvidia))
        elif gpus and not simulated:
            checks.append(
                Check(
                    "NVIDIA container runtime",
                    "fail",
                    f"GPUs are present but Docker has no nvidia runtime (runtimes: {', '.join(runtimes)})",
                    "install nvidia-container-toolkit, run `sudo nvidia-ctk runtime configure --runtime=docker` "
                    "and restart Docker",
                )
            )
        else:
            checks.append(Check("NVIDIA container runtime", "warn", "absent (not needed without GPUs)"))
        ours = contract_fingerprint()
        for engine in ENGINES:
            image = user.images()[engine]
            problem = runner.image_problem(image)
            if problem is None:
                checks.append(Check(f"{engine} image", "ok", f"{image} (contract {ours})"))
            else:
                status: Status = "fail" if engine in required_engines else "warn"
                made = ENGINE_SECTIONS[engine].make_images
                fix = "make images" if made else f"docker pull {image}, or set images.{engine}"
                checks.append(Check(f"{engine} image", status, problem, fix))

    checks.append(disk_check("results disk", results_dir or user.results_dir, "--results-dir / output.results_dir"))
    checks.append(disk_check("model cache disk", user.hf_home, "output.model_cache_dir / HF_HOME"))
    return checks


@dataclass(frozen=True)
class EngineStatus:
    """Where an engine can run on this host (``llem config``): its image here, its package importable here."""

    engine: str
    image: str
    image_here: bool | None  # None: Docker does not answer
    importable: bool  # the host's Python has the engine's packages (the local runner's need)

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "image": self.image,
            "image_here": self.image_here,
            "importable": self.importable,
        }


def engine_status(images: dict[str, str]) -> list[EngineStatus]:
    """Each engine's image (present on this host?) and whether the host's Python can import it:
    a look, not a check (``llem doctor`` checks the images' contract)."""
    import importlib.util

    from .docker_runner import DockerRunner

    runner = DockerRunner()
    try:
        runner.server()
        reachable = True
    except LlemError:
        reachable = False
    out = []
    for engine in ENGINES:
        packages = {m.split(".")[0] for m in ENGINE_SECTIONS[engine].import_check()} - {"llem_agent"}
        importable = all(importlib.util.find_spec(name) is not None for name in sorted(packages))
        here = runner.has_image(images[engine]) if reachable else None
        out.append(EngineStatus(engine, images[engine], here, importable))
    return out


def environment() -> dict[str, Any]:
    """The detailed environment (``llem config --verbose``): this host's facts as host.json
    records them, Docker's version, the GPUs NVML sees and the variables that choose devices."""
    from .docker_runner import DockerRunner
    from .hostinfo import host_facts

    try:
        version, _ = DockerRunner().server()
        docker = {"version": version.get("Version"), "api_version": version.get("ApiVersion")}
    except LlemError as exc:
        docker = {"unreachable": str(exc)}
    facts = host_facts(docker, {})
    facts.pop("images", None)
    variables = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "DOCKER_HOST", "HF_HOME", "LLEM_CONFIG")
    facts["environment"] = {name: os.environ.get(name) for name in variables}
    return facts
