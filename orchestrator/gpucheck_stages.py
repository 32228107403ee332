"""``make gpu-check``'s stages: where the check writes, and the stages in order (build, probe,
study, harness, docker), each through the children, the document rewritten after each and while
the study and the harness run."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llem_agent.contract import RAW_TRACE_FILE, write_atomic

from .devices import Gpu
from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNS_FAILED
from .gpucheck_analysis import StageRecord, Validation, _fmt, analyse, render
from .gpucheck_children import Children, HarnessJob, Probe, _last_line
from .gpucheck_plan import Cost, GpuCheckError, Plan, Sizing, estimate, format_estimate, size_plan, study_text
from .studydir import StudyDir

REPO = Path(__file__).resolve().parents[1]
STAGES = ("build", "probe", "study", "harness", "docker")


# --- where things go ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the check writes: the document, the replay fixture, and the evidence (the study
    file, llem's results, the harness rows, plan.json, the children's logs)."""

    doc: Path
    fixtures: Path
    evidence: Path

    @classmethod
    def inside(cls, out: Path) -> Layout:
        """``--out DIR``: everything under DIR (what the device tool brings back)."""
        return cls(out / "gpu-validation.md", out / "nvml", out)

    @classmethod
    def repository(cls, checkout: Path) -> Layout:
        """``make gpu-check``: the checkout's docs/ and tests/fixtures/, evidence in gpu-check-work/."""
        return cls(checkout / "docs" / "gpu-validation.md", checkout / "tests" / "fixtures" / "nvml",
                   checkout / "gpu-check-work")  # fmt: skip

    @property
    def results(self) -> Path:
        return self.evidence / "results"

    @property
    def rows(self) -> Path:
        return self.evidence / "harness-rows.jsonl"

    def log(self, stage: str) -> Path:
        (self.evidence / "logs").mkdir(parents=True, exist_ok=True)
        return self.evidence / "logs" / f"{stage}.log"


def checkout() -> Path | None:
    """The llem checkout this runs from (the harness script lives there), if any."""
    for root in (REPO, Path.cwd()):
        if (root / "tests" / "bench" / "harness.py").exists():
            return root.resolve()
    return None


def slug(gpu_name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in gpu_name.lower()).strip("-")


def keep_fixture(study_dir: Path, fixtures: Path, gpu_name: str) -> Path | None:
    """One real trace (the second experiment's, batch 8 by default) becomes ``fixtures/<gpu>.json``."""
    traces = sorted(StudyDir(study_dir).runs_dir.glob(f"*/{RAW_TRACE_FILE}"))
    if not traces:
        return None
    chosen = next((t for t in traces if t.parent.name.startswith("e002")), traces[0])
    data = json.loads(chosen.read_text(encoding="utf-8"))
    data["source"] = f"make gpu-check, {gpu_name}, run {chosen.parent.name}"
    fixtures.mkdir(parents=True, exist_ok=True)
    out = fixtures / f"{slug(gpu_name)}.json"
    write_atomic(out, json.dumps(data, indent=1))
    return out


def read_rows(path: Path) -> list[dict[str, float]]:
    """The harness pairs written so far (a torn last line from a killed harness is left out)."""
    rows: list[dict[str, float]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


# --- the check ----------------------------------------------------------------------------


class Check:
    """The stages in order; the document is rewritten after each, and while the study and the
    harness run whenever their evidence changed."""

    def __init__(self, plan: Plan, layout: Layout, gpus: list[Gpu], work: Path, run: Children) -> None:
        self.plan, self.layout, self.gpus, self.work, self.run = plan, layout, gpus, work, run
        self.model = work / "llama-1b"
        self.facts: dict[str, Any] = {}
        self.stages = {name: StageRecord(name) for name in STAGES}
        self.sizing: Sizing | None = None
        self.probe: Probe | None = None
        self.study_dir: Path | None = None
        self.started = time.monotonic()
        self._stage_wall = 0.0
        self._seen: tuple[int, ...] = ()
        self._done_runs = -1

    def set_estimate(self, costs: list[Cost]) -> None:
        for cost in (c for c in costs if c.stage):
            self.stages[cost.stage].estimate_s, self.stages[cost.stage].note = cost.seconds, cost.detail

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        """One stage: 'running' in the document while it runs, then what became of it. A
        GpuCheckError ends the stage, not the check."""
        record, started = self.stages[name], time.monotonic()
        record.status, self._stage_wall = "running", time.time()
        _say(f"{name} (estimate {_fmt(record.estimate_s, '.0f')} s): {record.note}")
        self.write()
        try:
            yield record
            record.status = "done"
        except GpuCheckError as exc:
            record.status = f"failed: {exc}"
            _say(f"{name} failed: {exc}")
        except KeyboardInterrupt:
            record.status = "interrupted"
            raise
        except Exception as exc:
            record.status = f"failed: internal error {type(exc).__name__}: {exc}"
            raise
        finally:
            record.took_s = time.monotonic() - started
            self.write()

    def build(self) -> None:
        with self.stage("build") as record:
            if (self.model / "config.json").exists():
                record.note = f"reused {self.model}"
                return
            part = self.work / "llama-1b.part"
            shutil.rmtree(part, ignore_errors=True)
            self.run.build(part, self.layout.log("build"))
            part.rename(self.model)  # only a finished model is ever reused

    def measure_steps(self) -> None:
        """The probe, then the plan sized from what it measured (and the estimate redone)."""
        with self.stage("probe") as record:
            probe = self.run.probe(self.model, self.plan.probed_sizes, self.plan.tokens_in, self.layout.log("probe"))
            self.probe, self.sizing = probe, size_plan(self.plan, probe.steps, measured=True)
            left = [c for c in estimate(self.plan, self.sizing) if c.stage not in ("build", "probe")]
            self.set_estimate(left)
            record.note = ", ".join(f"b{b}: {s.step_s * 1000:.1f} ms/step" for b, s in sorted(probe.steps.items()))
            print(format_estimate(self.plan, self.sizing, left), flush=True)
            plan = {"plan": asdict(self.plan), "probe": asdict(probe), "sizing": asdict(self.sizing),
                    "estimate": [asdict(c) for c in left]}  # fmt: skip
            write_atomic(self.layout.evidence / "plan.json", json.dumps(plan, indent=1))

    def study(self, sizing: Sizing) -> Path:
        study_file = self.layout.evidence / "gpu-check.yaml"
        write_atomic(study_file, study_text(self.plan, sizing, self.model))
        with self.stage("study"):
            log = self.layout.log("study")
            code = self.run.study(study_file, self.layout.results, "local", self.gpus[0].index, log, self.refresh)
            if code not in (EXIT_OK, EXIT_RUNS_FAILED) or self.find_study() is None:
                raise GpuCheckError(f"llem exited {code}: {_last_line(log)}")
        return study_file

    def harness(self, sizing: Sizing, root: Path | None) -> None:
        record = self.stages["harness"]
        if sizing.harness is None:
            record.status = "skipped: --harness-pairs 0"
        elif root is None:
            record.status = "skipped: tests/bench/harness.py not found (run it from a llem checkout)"
        else:
            with self.stage("harness"):
                self.layout.rows.unlink(missing_ok=True)  # an earlier check's pairs are not this one's
                script, log = root / "tests" / "bench" / "harness.py", self.layout.log("harness")
                job = HarnessJob(script, self.model, sizing.harness, sizing.tokens_out, self.plan.harness_pairs)
                self.run.harness(job, self.layout.rows, log, self.refresh)

    def docker(self, study_file: Path) -> None:
        """The same study through the docker runner, where Docker and the NVIDIA runtime are here."""
        record = self.stages["docker"]
        if not self.plan.docker:
            record.status = "skipped: not asked (--docker)"
            return
        from .docker_runner import DockerRunner
        from .doctor import nvidia_support

        try:
            info = DockerRunner().client.info()
        except Exception as exc:  # any failure means: no usable Docker here
            record.status = f"skipped: no Docker engine here ({(str(exc) or type(exc).__name__).splitlines()[0]})"
            return
        if nvidia_support(info) is None:
            record.status = "skipped: Docker has no NVIDIA runtime or CDI spec"
            return
        with self.stage("docker"):
            results, log = self.layout.evidence / "results-docker", self.layout.log("docker")
            code = self.run.study(study_file, results, "docker", self.gpus[0].index, log, lambda: None)
            record.note = f"llem exited {code}; results in {results}"

    def find_study(self) -> Path | None:
        """The study directory llem made in the study stage (the newest, not an earlier check's)."""
        if self.study_dir is None and self.layout.results.is_dir():
            made = [p for p in self.layout.results.iterdir() if StudyDir(p).is_study()]
            fresh = [p for p in made if p.stat().st_mtime >= self._stage_wall - 2]
            self.study_dir = max(fresh, key=lambda p: p.stat().st_mtime) if fresh else None
        return self.study_dir

    def refresh(self) -> None:
        """Rewrite the document when the manifest or the harness rows changed."""
        study = self.find_study()
        paths = [*([StudyDir(study).manifest_file] if study else []), self.layout.rows]
        seen = tuple(p.stat().st_mtime_ns for p in paths if p.exists())
        if seen != self._seen:
            self._seen = seen
            try:
                self.write()
            except Exception:  # a bug in the document must not stop the measurement; the final write says it
                self.layout.log("refresh").write_text(traceback.format_exc(), encoding="utf-8")

    def write(self) -> Validation:
        """The document, and the replay fixture once a run left a trace."""
        v = analyse(self.study_dir, read_rows(self.layout.rows))
        facts = self.facts | {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "wall_s": time.monotonic() - self.started,
            "tokens_out": self.sizing.tokens_out if self.sizing else self.plan.tokens_out,
            "driver": v.driver,
            "parameters": f"{v.parameters / 1e9:.2f}B" if v.parameters else None,
        }
        if self.probe is not None:
            facts |= {"torch": self.probe.torch, "cuda": self.probe.cuda}
        self.layout.doc.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.layout.doc, render(v, facts, list(self.stages.values()), self.sizing))
        if self.study_dir is not None:
            keep_fixture(self.study_dir, self.layout.fixtures, self.gpus[0].name)
            if len(v.runs) != self._done_runs:
                self._done_runs = len(v.runs)
                _say(f"study: {len(v.runs)} run(s) completed so far; {self.layout.doc} rewritten")
        return v

    def execute(self, root: Path | None) -> int:
        """Every stage that can run; the exit code says whether every target was met."""
        try:
            self.build()
            if self.stages["build"].status == "done":
                self.measure_steps()
            if self.sizing is not None:
                study_file = self.study(self.sizing)
                self.harness(self.sizing, root)
                self.docker(study_file)
        except KeyboardInterrupt:
            self.write()
            return _fail(f"interrupted; what was done is in {self.layout.evidence}", EXIT_INTERRUPTED)
        except Exception:  # a bug: the traceback goes to the logs, the user gets one line
            crash = self.layout.log("crash")
            crash.write_text(traceback.format_exc(), encoding="utf-8")
            self.write()
            return _fail(f"internal error (a bug); traceback in {crash}", EXIT_INTERNAL)
        v = self.write()
        for t in v.targets:
            _say(f"{'ok  ' if t.ok else 'FAIL'} {t.name}: {t.seen} (target: {t.target})")
        _say(f"written {self.layout.doc}; evidence in {self.layout.evidence}")
        complete = all(s.finished for s in self.stages.values())
        return EXIT_OK if v.ok and complete else EXIT_RUNS_FAILED


def _say(message: str) -> None:
    print(f"gpu-check: {message}", flush=True)


def _fail(message: str, code: int) -> int:
    print(f"gpu-check: {message}", file=sys.stderr)
    return code
