"""The ``local`` runner (003 ``runners: {ENGINE: local}``): the same agent as a host process.

For GPU nodes without Docker (many Slurm sites, the GPU validation machine). It takes the
same ``ContainerSpec`` as the Docker runner and honours what a process can: the run
directory, the environment, the run's GPUs (``CUDA_VISIBLE_DEVICES`` by UUID; none for a CPU
run), the heartbeat, the stall and run timeouts, signals and kill. It cannot give the agent a
read-only root, a network namespace or a memory limit: the result and host.json record
``runner: local`` so nobody mistakes one for the other. The host still never imports an engine:
whether it imports here is asked of a child interpreter.

The agent starts in its run directory, not in llem's: whatever the environment or the command
names relative to a working directory (a relative ``PYTHONPATH`` such as ``make gpu-check``'s
``images/agent``, ``PATH`` entries, the interpreter, a mount's source) is made absolute against
llem's own directory first, and the preflight probe runs the same way (the same environment, a
directory of its own), so a probe that passes means the agent will import.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llem_agent.contract import CONTAINER_RUN_DIR, ENGINE_SECTIONS

from .container import POD_IMAGE_ENV, SECRET_ENV, ContainerSpec, Mount
from .errors import EnvironmentProblem
from .runner import ContainerOutcome, Liveness, supervise

# What must import for each engine's agent (in a child interpreter, never in the host), as each
# engine's config section says (its import_check trait).
ENGINE_IMPORTS = {engine: ", ".join(section.import_check()) for engine, section in ENGINE_SECTIONS.items()}
# The Docker runner's exit codes for a process ended by a signal (128 + N).
_SIGNAL_BASE = 128
_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1
# Variables holding a list of directories, each resolved against the working directory (an
# empty entry means the working directory itself, for Python and for the shell alike).
PATH_LISTS = ("PYTHONPATH", "PATH", "LD_LIBRARY_PATH")
# Variables holding one path that a relative value would place under the run directory.
PATH_VALUES = (
    "PYTHONHOME", "PYTHONUSERBASE", "PYTHONPYCACHEPREFIX", "VIRTUAL_ENV", "HF_HOME", "HF_HUB_CACHE",
    "HF_TOKEN_PATH", "TRANSFORMERS_CACHE", "XDG_CACHE_HOME", "TORCH_HOME", "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR", "CUDA_HOME", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
)  # fmt: skip


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the agent gets SIGKILL when llem dies, however it dies (kill -9 included), so
    no run outlives the process that holds its device locks."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _prepare_child(cpuset: tuple[int, ...]) -> None:  # pragma: no cover - between fork and exec
    """Die with llem, and stay on the run's CPU cores (parallel runs on CPU)."""
    _die_with_parent()
    if cpuset:
        os.sched_setaffinity(0, cpuset)


class LocalRunner:
    """Starts the agent as ``python -m llem_agent EXPERIMENT`` in a session of its own."""

    kind = "local"

    def __init__(self, engine: str, python: str = sys.executable, chosen_by: str = "") -> None:
        """``chosen_by``: which setting made this engine run locally (said to the user)."""
        self.engine = engine
        self.python = python
        self.chosen_by = chosen_by

    def agent_path(self, mount: Mount) -> str:
        """A process sees the host's own directories (absolute: it does not start in llem's)."""
        return os.path.join(os.getcwd(), mount.source)

    def interpreter(self) -> str:
        """The agent's Python as an absolute path: a relative one (or a bare name found through a
        relative ``PATH`` entry) would be looked up from the run directory."""
        python = self.python
        if os.sep not in python:
            python = shutil.which(python) or python
        return os.path.join(os.getcwd(), python)

    def check(self, images: Iterable[str]) -> None:
        """The engine must import in the agent's environment, asked of a child process started the
        way the agent is: the same interpreter and environment, in a directory that is not llem's."""
        python = self.interpreter()
        with tempfile.TemporaryDirectory(prefix="llem-probe-") as elsewhere:
            try:
                probe = subprocess.run(
                    [python, "-c", f"import {ENGINE_IMPORTS[self.engine]}"],
                    capture_output=True,
                    text=True,
                    check=False,
                    cwd=elsewhere,
                    env=host_environment() | {"CUDA_VISIBLE_DEVICES": ""},
                )
            except OSError as exc:
                raise EnvironmentProblem(
                    f"runner local for {self.engine}: cannot start {python}: {exc.strerror or exc}"
                ) from None
        if probe.returncode != 0:
            lines = (probe.stderr or probe.stdout).strip().splitlines()
            why = lines[-1] if lines else f"exit {probe.returncode}"
            raise EnvironmentProblem(
                f"runner local for {self.engine}: the engine does not import with {python} ({why}); "
                f"install it there, or run {self.engine} with the docker runner"
            )

    def describe(self, images: Iterable[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """What host.json records instead of a Docker engine: the interpreter the agent runs in."""
        return {"runner": "local", "python": platform.python_version(), "executable": self.interpreter()}, {}

    def environment(self, spec: ContainerSpec) -> dict[str, str]:
        """The host's environment (its relative paths made absolute), the spec's (paths translated
        to the host's), the run's GPUs."""
        env = host_environment()
        for key, value in spec.environment.items():
            env[key] = _translate(value, spec.mounts)
        # By UUID: indices differ between CUDA's and NVML's numbering, UUIDs never do.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_uuids) if spec.gpu_uuids else ""
        for key in spec.passthrough_env:
            if not os.environ.get(key):
                env.pop(key, None)
        return env

    def run(
        self, spec: ContainerSpec, timeout_s: float, log_path: Path, liveness: Liveness | None = None
    ) -> ContainerOutcome:
        """Run the agent to its exit, ``timeout_s``, or a stale heartbeat; it never outlives this call."""
        command = [self.interpreter(), "-m", "llem_agent", *(_translate(arg, spec.mounts) for arg in spec.command)]
        run_dir = spec.mount_at(CONTAINER_RUN_DIR)
        start, started_at = time.monotonic(), time.time()
        with log_path.open("wb") as log:
            try:
                process = subprocess.Popen(
                    command,
                    env=self.environment(spec),
                    cwd=str(run_dir.source) if run_dir else None,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches llem, which stops the agent itself
                    preexec_fn=functools.partial(_prepare_child, spec.cpuset),  # noqa: PLW1509 - no locks taken
                )
            except OSError as exc:
                raise EnvironmentProblem(f"cannot start the agent with {self.python}: {exc.strerror or exc}") from None

            def exited(seconds: float) -> bool:
                try:
                    process.wait(timeout=seconds)
                except subprocess.TimeoutExpired:
                    return False
                return True

            try:
                timed_out, hung = supervise(
                    exited, lambda: _kill(process, grace_s=0.0), timeout_s, liveness, start=start, started_at=started_at
                )
            finally:
                if process.poll() is None:  # Ctrl-C, or an error in this loop: never leave it running
                    _kill(process, grace_s=_GRACE_S)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)  # what the agent started (vLLM's engine core) ends with it
        code = process.returncode
        exit_code = _SIGNAL_BASE - code if code is not None and code < 0 else code
        return ContainerOutcome(
            exit_code, timed_out, False, time.monotonic() - start, hung, image_digest=pod_image_digest(os.environ)
        )


def _kill(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the agent's whole session (it writes error.json), SIGKILL what is left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if sig == signal.SIGTERM and grace_s <= 0:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def host_environment() -> dict[str, str]:
    """This process's environment as a child started in another directory must see it: every
    path in ``PATH_LISTS`` and ``PATH_VALUES`` absolute against llem's working directory, and no
    Hugging Face token (as in a container: a token file, and only where a download can happen)."""
    env = dict(os.environ)
    base = os.getcwd()
    env.pop(SECRET_ENV, None)
    for key in PATH_LISTS:
        if env.get(key):
            env[key] = os.pathsep.join(os.path.join(base, entry) for entry in env[key].split(os.pathsep))
    for key in PATH_VALUES:
        if env.get(key):
            env[key] = os.path.join(base, env[key])
    return env


def _translate(value: str, mounts: Iterable[Mount]) -> str:
    """A container path (a mount's target, or below it) as the host path it is mounted from (absolute)."""
    for mount in sorted(mounts, key=lambda m: len(m.target), reverse=True):
        if value == mount.target or value.startswith(mount.target + "/"):
            return os.path.join(os.getcwd(), mount.source) + value[len(mount.target) :]
    return value


def pod_image_digest(environ: Any) -> str | None:
    """In a pod of llem k8s, the pod's image where the Job names it by digest (``POD_IMAGE_ENV``):
    the image the run ran in. None elsewhere, and for a pod whose image is a tag (it can move)."""
    ref = str(environ.get(POD_IMAGE_ENV) or "")
    return ref if "@sha256:" in ref else None
