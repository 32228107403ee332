"""The Slurm executor: a job array whose tasks each run ``llem worker STUDY_DIR``.

llem plans locally and writes the study directory (on storage every node sees); the array's
tasks claim pending runs one by one through the study's claims (:mod:`orchestrator.claims`)
and run them with their node's runner on the devices Slurm gave them. There is no scheduler
of llem's own: Slurm places the tasks, llem's claims make sure each run runs once.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .devices import devices_needed
from .errors import ConfigError, EnvironmentProblem
from .manifest import CLAIMABLE, ProgressWatch
from .plan import Plan
from .studydir import FINAL_STATUSES, StudyDir
from .words import plural

# File systems every node of a cluster can see; anything else gets a warning.
SHARED_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "glusterfs", "fuse.glusterfs", "panfs", "wekafs",
             "fuse.sshfs", "cifs", "smb3", "fuse.juicefs", "virtiofs"}  # fmt: skip


@dataclass(frozen=True)
class SlurmOptions:
    """What goes into the sbatch script's header (CLI flags over the user config's ``slurm:``)."""

    partition: str | None = None
    account: str | None = None
    time: str | None = None
    tasks: int | None = None  # array size; default: one per pending run, at most 8
    gpus: int | None = None  # GRES gpu per task; default: from the experiments when the partition has GPUs
    sbatch_lines: Sequence[str] = field(default_factory=tuple)


def gpus_per_run(plan: Plan, partition: str | None) -> int:
    """GRES per array task: the most GPUs one run of the plan needs (tensor x pipeline parallel),
    when the partition's nodes have GPUs at all (``sinfo``); 0 on a CPU partition."""
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%G", *(["-p", partition] if partition else [])],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    if "gpu" not in done.stdout:
        return 0
    return max((devices_needed(e.config) for e in plan.study.experiments), default=0)


def llem_command() -> str:
    """The llem the array's tasks run: this one (its environment must be on shared storage)."""
    beside = Path(sys.executable).parent / "llem"
    return str(beside) if beside.exists() else "llem"


def script(study_dir: Path, plan: Plan, options: SlurmOptions, worker_flags: Sequence[str], pending: int) -> str:
    """The sbatch script of the study's job array, readable on its own."""
    tasks = options.tasks or max(1, min(pending, 8))
    gpus = options.gpus if options.gpus is not None else gpus_per_run(plan, options.partition)
    study = StudyDir(study_dir)
    header = [
        f"--job-name={_header_value(f'llem-{plan.study.name}'[:80])}",
        f"--array=0-{tasks - 1}",
        f"--output={_header_value(f'{study.slurm_dir}/%A_%a.out')}",
    ]
    chosen = (("partition", options.partition), ("account", options.account), ("time", options.time))
    header += [f"--{key}={value}" for key, value in chosen if value]
    if gpus:
        header.append(f"--gres=gpu:{gpus}")
    for line in options.sbatch_lines:
        if not line.strip():
            continue
        text = line.strip().removeprefix("#SBATCH").strip()
        if "\n" in text:
            raise ConfigError(f"sbatch line {line!r}: one option per line")
        header.append(text)
    worker = [
        llem_command(),
        "worker",
        str(study_dir),
        "--worker-id",
        "slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}",
    ]
    # No --gpus: the worker keeps to the GPUs Slurm gave its task (CUDA_VISIBLE_DEVICES), right
    # whether or not a cgroup renumbers them; $SLURM_JOB_GPUS are the node's numbers.
    command = " ".join(_quote(part) for part in [*worker, *worker_flags])
    lines = [
        "#!/bin/bash",
        f"# llem {__version__}: study {plan.study.name}, {plural(len(plan.runs), 'run')} ({pending} to run) by a job",
        f"# array of {plural(tasks, 'task')}. Each task runs `llem worker`, which claims pending runs one by one",
        f"# ({study.claims_dir}/) until none is left; a run whose task dies is claimed again.",
        "# What is left after the job:  llem run STUDY --resume-dir THIS_STUDY_DIR --executor slurm",
        *(f"#SBATCH {h}" for h in header),
        "set -euo pipefail",
        f"exec {command}",
        "",
    ]
    return "\n".join(lines)


def _header_value(value: str) -> str:
    """A value for an ``#SBATCH`` line: double-quoted where it holds a space (sbatch splits the
    line at whitespace otherwise, and the rest of a path becomes a cryptic error)."""
    if any(c in value for c in '"\n\r\\'):
        raise ConfigError(f"{value!r}: quotes, backslashes or line breaks cannot go in sbatch's header")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def _quote(part: str) -> str:
    """Shell-quote ``part``, leaving ${SLURM_...} for the shell to expand."""
    if "${SLURM_" in part:
        return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return shlex.quote(part)


def shared_storage_warning(path: Path) -> str | None:
    """Why ``path`` may be invisible to other nodes (None when it is on a shared file system)."""
    resolved = path.resolve()
    for local in ("/tmp", "/var/tmp", "/dev/shm", "/run"):
        if resolved == Path(local) or Path(local) in resolved.parents:
            return f"{resolved} is under {local}, which is local to each node: tasks on other nodes will not see it"
    fstype = _fstype(resolved)
    if fstype is not None and fstype not in SHARED_FS:
        return (
            f"{resolved} is on a {fstype} file system, local to this host: tasks on other nodes will not see it "
            "(use a results directory on NFS, Lustre, GPFS, ...)"
        )
    return None


def _fstype(path: Path) -> str | None:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def require_sbatch() -> None:
    """Slurm's client commands must be here before anything is planned for them."""
    if shutil.which("sbatch") is None:
        raise EnvironmentProblem(
            "sbatch not found: --executor slurm runs on a Slurm submit host (Slurm's client commands on PATH)"
        )


def submit(script_path: Path) -> str:
    """``sbatch --parsable``: the job id, or one line saying why Slurm would not take it."""
    try:
        done = subprocess.run(
            ["sbatch", "--parsable", str(script_path)], capture_output=True, text=True, check=False, timeout=120
        )
    except FileNotFoundError:
        raise EnvironmentProblem(
            "sbatch not found: --executor slurm runs on a Slurm submit host (Slurm's client commands on PATH)"
        ) from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem("sbatch did not answer in 120 s: is slurmctld up? (sinfo)") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise EnvironmentProblem(f"Slurm refused the job: {why[-1] if why else f'sbatch exit {done.returncode}'}")
    return done.stdout.strip().split(";")[0]


def job_alive(job_id: str) -> bool:
    """Whether any task of ``job_id`` may still be pending or running (squeue). Only Slurm saying
    so ends it: an empty answer, or "Invalid job id" (a job it has forgotten). A failed call
    (slurmctld busy or restarting: "Socket timed out") says nothing, so the job is followed on."""
    try:
        done = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, check=False, timeout=60
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return True  # cannot tell: keep following the manifest
    if done.returncode == 0:
        return bool(done.stdout.strip())
    return "invalid job id" not in (done.stderr + done.stdout).lower()


def follow(
    study_dir: Path, job_id: str, on_progress: Callable[[int, int], None], poll_s: float = 2.0
) -> tuple[str, int]:
    """Wait for the job: until the study's status is final with no run left to any task, or
    the job has left the queue.

    A final status alone is not the end: one task whose circuit breaker or wall clock stopped it
    records that while the other tasks still run the study's remaining runs.

    Returns the study's status (``incomplete`` when the job ended with runs left and no final
    status) and the number of runs not completed.
    """
    watch = ProgressWatch(study_dir, on_progress)
    gone_since: float | None = None
    while True:
        manifest = watch.poll()
        if manifest is None:
            raise EnvironmentProblem(f"cannot read {StudyDir(study_dir).manifest_file} while following job {job_id}")
        left = sum(1 for e in manifest.runs if e.status != "completed")
        final = manifest.status in FINAL_STATUSES
        if final and not any(e.status in CLAIMABLE for e in manifest.runs):
            return manifest.status, left
        if not job_alive(job_id):
            # A task may finish the manifest just as the job leaves the queue: look once more.
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > poll_s * 2:
                return (manifest.status if final else "incomplete"), left
        time.sleep(poll_s)


def write_script(study_dir: Path, text: str) -> Path:
    study = StudyDir(study_dir)
    folder = study.slurm_dir
    folder.mkdir(exist_ok=True)
    if os.getuid() == 0:
        os.chmod(folder, 0o2775)
    path = study.slurm_script
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path
