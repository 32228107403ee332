"""Who runs a planned study's runs, behind one protocol: this process, ``llem worker``
processes on this host (one per slot of disjoint devices), a Slurm job array of ``llem worker``
tasks, or Kubernetes Indexed Jobs of ``llem worker`` pods. Every worker is ``llem worker``.

``submit`` opens (or resumes) the study directory and hands its runs to whoever runs them;
``follow`` waits until they are done and says how the study ended, or returns at once where
nobody waits (Slurm without ``--wait``, Kubernetes). Nothing here prints: lines go to ``say``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from .errors import EXIT_OK, EXIT_RUNS_FAILED, EnvironmentProblem, Interrupted
from .options import Options
from .session import open_study
from .studydir import StudyDir, final_status
from .words import be, plural

if TYPE_CHECKING:
    from .k8s import K8sOptions
    from .parallel import Slot
    from .slurm import SlurmOptions
    from .studyloop import StudyLoop

ExecutorName = Literal["process", "parallel", "slurm", "k8s"]
EXECUTORS: tuple[ExecutorName, ...] = ("process", "parallel", "slurm", "k8s")
Say = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Followed:
    """How following a study ended: its status (None: its workers still run, nobody waited)."""

    status: str | None
    detail: str = ""


class Executor(Protocol):
    name: ExecutorName

    def submit(self, loop: StudyLoop, options: Options) -> Path:
        """Open (or resume) the study directory and hand its runs to whoever runs them."""

    def follow(self, loop: StudyLoop, study_dir: Path) -> Followed:
        """Wait until the runs are done (or return at once where nobody waits)."""


class InProcess:
    """This process runs every run, one at a time (the Python API's ``run_study``)."""

    name: ExecutorName = "process"

    def submit(self, loop: StudyLoop, options: Options) -> Path:
        return open_study(options, loop)

    def follow(self, loop: StudyLoop, study_dir: Path) -> Followed:
        loop.execute()
        manifest = StudyDir(study_dir).manifest()
        return Followed(manifest.status, (manifest.history[-1].get("detail", "") if manifest.history else ""))


class Parallel:
    """One ``llem worker`` per slot of disjoint devices on this host. This process keeps the study
    directory's lock while its workers run, so a second ``--resume`` of it is refused in one line;
    runs that workers of another llem still hold (one killed a moment ago, Slurm tasks) are named,
    and the workers wait for them."""

    name: ExecutorName = "parallel"

    def __init__(self, slots: Sequence[Slot], llem: str, worker_flags: Sequence[str], say: Say, progress: Progress):
        self.slots, self.llem, self.worker_flags = list(slots), llem, list(worker_flags)
        self.say, self.progress = say, progress
        self.overlapped = 0  # runs whose measured windows overlapped another's (after follow)

    def submit(self, loop: StudyLoop, options: Options) -> Path:
        from .claims import ClaimBoard

        study_dir = open_study(options, loop)
        plan = loop.plan
        where = "; ".join(slot.describe() for slot in self.slots)
        self.say(f"study {plan.study.name}: {plural(len(plan.runs), 'run')}, {len(self.slots)} at a time ({where}) "
                 f"-> {study_dir}")  # fmt: skip
        held = ClaimBoard(study_dir).live_claims()
        if held:
            who = "; ".join(f"{run_id} by {holder}" for run_id, holder in held.items())
            n = len(held)
            self.say(
                f"{plural(n, 'run')} {be(n)} held by workers of another llem ({who}); this study's workers "
                "wait for them"
            )
        return study_dir

    def follow(self, loop: StudyLoop, study_dir: Path) -> Followed:
        try:
            return self._follow(study_dir)
        finally:
            loop.release()

    def _follow(self, study_dir: Path) -> Followed:
        from .claims import ClaimBoard
        from .manifest import ManifestStore
        from .parallel import record_overlaps, run_workers

        board, store = ClaimBoard(study_dir), ManifestStore.attach(study_dir)
        command = [self.llem, "worker", str(study_dir), *self.worker_flags]
        try:
            codes = run_workers(study_dir, self.slots, command, self.progress)
        except KeyboardInterrupt:
            store.set_status("interrupted")
            hint = f"--resume-dir {study_dir} continues"
            raise Interrupted(f"interrupted; completed results are kept in {study_dir} ({hint})") from None
        for i, code in enumerate(codes):
            if code not in (EXIT_OK, EXIT_RUNS_FAILED):
                log = StudyDir(study_dir).worker_log(i).read_text(errors="replace").strip().splitlines()
                self.say(f"worker slot{i} ({self.slots[i].describe()}) exited {code}: {log[-1] if log else ''}")
        self.overlapped = record_overlaps(study_dir)
        manifest = store.refresh()
        held = board.live_claims()
        if held:  # a worker lost a run to another llem's: that one concludes the study
            self.say(
                f"{plural(len(held), 'run')} {be(len(held))} still held by other workers ({', '.join(held)}); "
                "they finish the study"
            )
            return Followed(None)
        if manifest.status == "running":  # no worker got as far as concluding the study
            ended = final_status((e.status for e in manifest.runs), note="no worker concluded")
            assert ended is not None  # nothing held: always this process's to conclude
            store.set_status(ended.status, detail=ended.detail)
            return Followed(ended.status, ended.detail)
        return Followed(manifest.status)


class Slurm:
    """A Slurm job array whose tasks each run ``llem worker``: the study is planned here (on
    storage every node sees), its script written into it and submitted; with ``wait``, followed
    until the job ends."""

    name: ExecutorName = "slurm"

    def __init__(self, options: SlurmOptions, worker_flags: Sequence[str], wait: bool, say: Say, progress: Progress):
        self.options, self.worker_flags, self.wait, self.say, self.progress = (
            options, list(worker_flags), wait, say, progress
        )  # fmt: skip
        self.job: str | None = None
        self.pending = 0

    def submit(self, loop: StudyLoop, options: Options) -> Path:
        from . import slurm
        from .manifest import CLAIMABLE, ManifestStore

        slurm.require_sbatch()  # before a study directory is planned and left waiting
        loop.preflight(here=False)
        study_dir = open_study(options, loop, describe=False)  # host.json: not this host's runners
        loop.release()
        warning = slurm.shared_storage_warning(study_dir)
        if warning:
            self.say(f"warning: {warning}")
        store = ManifestStore.attach(study_dir)
        self.pending = sum(1 for e in store.manifest.runs if e.status in CLAIMABLE)
        if self.pending == 0:
            return study_dir
        text = slurm.script(study_dir.resolve(), loop.plan, self.options, self.worker_flags, self.pending)
        path = slurm.write_script(study_dir, text)
        try:
            self.job = slurm.submit(path)
        except EnvironmentProblem as exc:
            raise EnvironmentProblem(
                f"{exc}; the study is planned in {study_dir} (--resume-dir {study_dir} --executor slurm submits it "
                "again)"
            ) from None
        store.note(status="submitted", executor="slurm", job=self.job, script=str(path))
        name = loop.plan.study.name
        self.say(
            f"study {name}: {plural(self.pending, 'run')} submitted as Slurm job {self.job} ({path}) -> {study_dir}"
        )
        return study_dir

    def follow(self, loop: StudyLoop, study_dir: Path) -> Followed:
        from . import slurm

        if self.job is None:
            return Followed("completed", "nothing left to run")
        if not self.wait:
            return Followed(None, f"follow it: squeue -j {self.job}; llem results {study_dir}")
        status, left = slurm.follow(study_dir, self.job, self.progress)
        return Followed(status, f"{plural(left, 'run')} not completed" if left else "")


class Kubernetes:
    """Kubernetes Indexed Jobs whose pods each run ``llem worker``: the study is planned (or
    resumed) here on the volume the pods mount, and one Job per engine is written to ``out`` for
    kubectl to apply; nobody here waits for the pods (``llem results`` reads what they leave)."""

    name: ExecutorName = "k8s"

    def __init__(self, options: K8sOptions, out: Path, root: Path, worker_flags: Sequence[str] = ()):
        self.options, self.out, self.root, self.worker_flags = options, out, root, list(worker_flags)
        self.written: list[Path] = []

    def submit(self, loop: StudyLoop, options: Options) -> Path:
        from . import k8s

        loop.preflight(here=False)
        study_dir = open_study(options, loop, describe=False)  # host.json: not this host's runners
        loop.release()
        in_pod = Path(self.options.mount_path) / study_dir.resolve().relative_to(self.root)
        self.written = k8s.write(self.out, k8s.jobs(in_pod, loop.plan, self.options, self.worker_flags))
        return study_dir

    def follow(self, loop: StudyLoop, study_dir: Path) -> Followed:
        return Followed(None, f"kubectl apply -f {self.out} runs them, llem results {study_dir} reads them")


def exit_code(followed: Followed) -> int:
    """The command's exit code for how a study ended (still running elsewhere: 0)."""
    return EXIT_OK if followed.status in (None, "completed") else EXIT_RUNS_FAILED
