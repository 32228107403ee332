"""make gpu-check as a command: the plan and its estimate (--dry-run), refusals, and the stages
run with fakes at the seam (no GPU, no torch): the document is rewritten after every stage and
what a stage left stays in --out when a later one fails or the check is cut short."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from llem.devices import Gpu
from llem.errors import EXIT_RUNS_FAILED
from llem.gpucheck import main
from llem.gpucheck_children import Children, HarnessJob, Probe, child_env, provenance
from llem.gpucheck_plan import GpuCheckError, Plan, Step, assumed_sizing, estimate, study_text, total_s
from llem.gpucheck_stages import read_rows
from llem.study import load_study
from llem_agent.contract import RAW_TRACE_FILE
from tests.conftest import REPO
from tests.unit.test_gpucheck import PAIRS, study

H100 = Gpu(0, "GPU-0", "NVIDIA H100 80GB HBM3")
STEPS = {1: Step(0.02, 0.02), 8: Step(0.021, 0.021), 32: Step(0.05, 0.025)}


def gpucheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.gpucheck", *args],
        capture_output=True, text=True, check=False, cwd=REPO, env=env,
    )  # fmt: skip


# --- the plan and its estimate ------------------------------------------------------------


def test_the_default_plan_fits_six_minutes_on_an_h100_by_the_cost_model():
    """By hand, from the constants (assumed step at batch b: 0.020 + 0.000125 b s, prefill alike):
    b1: 0.020125 s x 128 tokens = 2.576 s a batch -> 5 batches = 12.88 s window
    b8: 0.021 x 128 = 2.688 s -> 5 batches = 13.44 s;  b32: 0.024 x 128 = 3.072 s -> 4 = 12.288 s
    a run: start + load 15 + warm-up (one batch) + thermal floor 30 + window + end 3
      b1 63.456, b8 64.128, b32 63.36 -> study: start 10 + baseline 10 (once) + 190.944 = 210.944
    harness: 20 + 7 passes x (warm-up 2.688 + two batches 5.376) + 4 agent passes x 1 s idle sampling = 80.448
    total: build 30 + probe 20 + 210.944 + 80.448 = 341.392 s <= 360 s."""
    plan = Plan()
    costs = {c.stage: c.seconds for c in estimate(plan, assumed_sizing(plan)) if c.stage}
    assert costs == pytest.approx({"build": 30, "probe": 20, "study": 210.944, "harness": 80.448})
    total = total_s(estimate(plan, assumed_sizing(plan)))
    assert total == pytest.approx(341.392) and total <= 360


def test_dry_run_prints_the_plan_and_estimate_without_a_gpu_or_torch():
    probe = (
        "import sys; from llem.gpucheck import main; code = main(['--dry-run']); "
        "assert 'torch' not in sys.modules, 'the host imported torch'; raise SystemExit(code)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "  total     341.4 s" in out
    assert "  study     210.9 s" in out and "  harness    80.4 s" in out
    assert "b1: 5 x 1 prompts x 128 tokens; warm-up 2.6 + window 12.9 s" in out
    assert "study: 3 experiments x 1 cycle(s) = 3 runs (checked by llem's loader)" in out
    assert "nothing was started" in out


def test_flags_grow_the_plan_and_its_estimate():
    """--cycles 3 --fresh-baseline: every run 3 times and a baseline each (9 x 10 s): the study
    10 + 90 + 3 x 190.944 = 672.832 s; --harness-pairs 0 drops the harness."""
    plan = Plan(cycles=3, fresh_baseline=True, harness_pairs=0, batch_sizes=(1, 8, 32))
    costs = {c.stage: c.seconds for c in estimate(plan, assumed_sizing(plan)) if c.stage}
    assert costs == pytest.approx({"build": 30, "probe": 20, "study": 672.832})
    assert Plan(harness_pairs=0).probed_sizes == (1, 8, 32) and Plan(harness_batch=4).probed_sizes == (1, 4, 8, 32)


def test_the_study_is_one_llem_accepts_with_the_sized_work(tmp_path):
    plan = Plan()
    path = tmp_path / "gpu-check.yaml"
    path.write_text(study_text(plan, assumed_sizing(plan), tmp_path / "my model"))
    configs = [e.config for e in load_study(path).experiments]
    assert [(c.pytorch.batch_size, c.dataset.n_prompts, c.warmup.n_warmup) for c in configs if c.pytorch] == [
        (1, 5, 1), (8, 40, 8), (32, 128, 32)]  # fmt: skip
    first = configs[0]
    assert (first.max_output_tokens, first.decoder.min_new_tokens, first.max_input_tokens) == (128, 128, 128)
    assert (first.baseline.strategy, first.baseline.duration_seconds, first.warmup.thermal_floor_seconds) == (
        "cached", 10.0, 30.0)  # fmt: skip
    assert first.model == str(tmp_path / "my model") and first.dtype == "bfloat16"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cycles", "0"], "--cycles must be at least 1"),
        (["--batch-sizes", "1,x"], "--batch-sizes expects sizes such as 1,8,32"),
        (["--batch-sizes", "1,1"], "--batch-sizes: distinct sizes"),
        (["--window-s", "8"], "--window-s must be at least 10"),
        (["--thermal-floor-s", "10"], "--thermal-floor-s must be at least 30"),
        (["--cycles", "two"], "invalid int value"),
        (["--tokens-in", "2000", "--tokens-out", "100"], "more than the model's 2048 positions"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(args, message, capsys):
    try:
        code = main(["--dry-run", *args])
    except SystemExit as stop:  # argparse's own errors come through the same one-line path
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_work_inside_out_is_refused(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--work", str(tmp_path / "w")], gpus=lambda: ([H100], None)) == 2
    assert "--work must be outside --out" in capsys.readouterr().err


# --- refusals, whatever the host has -----------------------------------------------------


def test_without_a_gpu_it_refuses_in_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path)], gpus=lambda: ([], "NVML unavailable: no driver")) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpu-check: no NVIDIA GPU here (NVML unavailable: no driver); run it on a GPU machine"]
    assert not any(tmp_path.iterdir())  # nothing written, nothing started
    mig = Gpu(0, "GPU-0", "NVIDIA H100", mig=True)
    assert main(["--out", str(tmp_path)], gpus=lambda: ([mig], None)) == 3


def test_the_command_refuses_in_one_line_where_nvml_finds_no_driver(tmp_path):
    """The real command, with an NVML that has no driver (a GPU host's own NVML is shadowed)."""
    (tmp_path / "pynvml.py").write_text(
        "class NVMLError(Exception):\n    pass\n\n\ndef nvmlInit():\n    raise NVMLError('Driver Not Loaded')\n"
    )
    # imported at start-up, so llem asks it even on a host without NVML's library (where llem
    # would otherwise say so without importing nvidia-ml-py)
    (tmp_path / "sitecustomize.py").write_text("import pynvml\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), str(REPO / "images" / "agent")])}
    done = gpucheck("--out", str(tmp_path / "out"), env=env)
    assert done.returncode == 3
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("gpu-check: no NVIDIA GPU here (") and "Driver Not Loaded" in line
    assert line.endswith("); run it on a GPU machine")
    assert done.stdout == "" and not (tmp_path / "out").exists()


# --- the stages, with fakes at the seam ---------------------------------------------------


class FakeChildren(Children):
    """The stages' work without children: a synthetic study, recorded documents, planned failures."""

    def __init__(self, env: dict[str, str], out: Path, fail: dict[str, BaseException] | None = None) -> None:
        super().__init__(env)
        self.doc, self.fail = out / "gpu-validation.md", fail or {}
        self.study_code = 0  # what the fake llem exits with
        self.seen: dict[str, str] = {}  # the document as each stage found it when it started
        self.calls: dict[str, object] = {}

    def _stage(self, name: str) -> None:
        self.seen[name] = self.doc.read_text()

    def build(self, model_dir: Path, log: Path) -> None:
        self._stage("build")
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_text("{}")
        self.calls["build"] = model_dir

    def probe(self, model_dir: Path, sizes: tuple[int, ...], tokens_in: int, log: Path) -> Probe:
        self._stage("probe")
        self.calls["probe"] = (model_dir, sizes, tokens_in)
        if "probe" in self.fail:
            raise self.fail["probe"]
        return Probe("2.11.0", "13.0", H100.name, {b: STEPS[b] for b in sizes})

    def study(self, study_file: Path, results: Path, runner: str, gpu: int, log: Path, tick: Callable[[], None]) -> int:  # noqa: PLR0917
        self._stage("study")
        self.calls["study"] = (study_file.read_text(), runner, gpu)
        if self.study_code:
            log.write_text("llem: error: runner local for pytorch: the engine does not import\n")
            return self.study_code
        results.mkdir(parents=True, exist_ok=True)
        study_dir = study(results, n_cycles=1)
        shutil.copy(REPO / "tests" / "fixtures" / "nvml" / "synthetic-reference.json",
                    next(study_dir.glob("runs/e002*")) / RAW_TRACE_FILE)  # fmt: skip
        tick()
        self.seen["study (mid-way)"] = self.doc.read_text()
        if "study" in self.fail:
            raise self.fail["study"]
        return self.study_code

    def harness(self, job: HarnessJob, rows: Path, log: Path, tick: Callable[[], None]) -> None:
        self._stage("harness")
        self.calls["harness"] = job
        for row in PAIRS[:2]:
            with rows.open("a") as out:
                out.write(json.dumps(row) + "\n")
        tick()
        if "harness" in self.fail:
            raise self.fail["harness"]
        with rows.open("a") as out:
            out.write(json.dumps(PAIRS[2]) + "\n")


def run_check(
    tmp_path: Path, fail: dict[str, BaseException] | None = None, study_code: int = 0
) -> tuple[int, FakeChildren, Path]:
    out, work = tmp_path / "out", tmp_path / "work"
    made: list[FakeChildren] = []

    def children(env: dict[str, str]) -> FakeChildren:
        made.append(FakeChildren(env, out, fail))
        made[0].study_code = study_code
        return made[0]

    code = main(["--out", str(out), "--work", str(work)], gpus=lambda: ([H100], None), children=children)
    return code, made[0], out


def test_every_stage_rewrites_the_document_and_the_evidence_lands_in_out(tmp_path):
    code, fake, out = run_check(tmp_path)
    assert code == 0, (out / "gpu-validation.md").read_text()
    assert "| build | running |" in fake.seen["build"] and "| probe | not run |" in fake.seen["build"]
    assert "| build | done |" in fake.seen["probe"] and "| probe | running |" in fake.seen["probe"]
    assert "| probe | done |" in fake.seen["study"] and "b1: 20.0 ms/step" in fake.seen["study"]
    assert "## Plan (decode steps measured by the probe)" in fake.seen["study"]
    assert fake.seen["study (mid-way)"].count("| e0") == 3  # the runs, before the study stage ended
    assert "| study | done |" in fake.seen["harness"]
    doc = (out / "gpu-validation.md").read_text()
    assert "**Status: complete**" in doc and "**Result: all targets met.**" in doc
    assert "| docker | skipped: not asked (--docker) |" in doc
    assert "median 0.995 of 3 pairs" in doc
    # the evidence: study file, llem's results, harness rows, the plan, the fixture; never the model
    assert (out / "gpu-check.yaml").exists() and list(out.glob("results/*/manifest.json"))
    assert len(read_rows(out / "harness-rows.jsonl")) == 3
    plan = json.loads((out / "plan.json").read_text())
    assert plan["sizing"]["tokens_out"] == 128 and plan["probe"]["steps"]["1"] == {"prefill_s": 0.02, "step_s": 0.02}
    fixture = json.loads((out / "nvml" / "nvidia-h100-80gb-hbm3.json").read_text())
    assert fixture["source"].startswith("make gpu-check, NVIDIA H100 80GB HBM3, run e002")
    assert fake.calls["build"] == tmp_path / "work" / "llama-1b.part" and (tmp_path / "work" / "llama-1b").is_dir()
    assert not list(out.rglob("config.json"))
    # what the stages were asked: the probe at every batch size; the study sized from its steps
    assert fake.calls["probe"] == (tmp_path / "work" / "llama-1b", (1, 8, 32), 128)
    text, runner, gpu = fake.calls["study"]  # type: ignore[misc]
    assert (runner, gpu) == ("local", 0) and "dataset.n_prompts: 5," in text and "strategy: cached" in text
    job = fake.calls["harness"]
    assert isinstance(job, HarnessJob) and (job.pairs, job.window.batch, job.window.n_prompts) == (3, 8, 16)


def test_a_study_that_breaks_mid_way_leaves_its_runs_and_a_document_saying_so(tmp_path, capsys):
    code, fake, out = run_check(tmp_path, {"study": RuntimeError("boom")})
    assert code == 70
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("gpu-check: internal error (a bug)")
    doc = (out / "gpu-validation.md").read_text()
    assert "| study | failed: internal error RuntimeError: boom |" in doc
    assert "**Status: incomplete**" in doc and "harness not run" in doc
    assert doc.count("| e0") == 3  # the runs it had finished
    assert list(out.glob("results/*/manifest.json")) and (out / "nvml" / "nvidia-h100-80gb-hbm3.json").exists()
    assert "RuntimeError: boom" in (out / "logs" / "crash.log").read_text()
    assert "harness" not in fake.seen


def test_a_check_cut_short_in_the_harness_keeps_the_pairs_it_measured(tmp_path, capsys):
    code, _, out = run_check(tmp_path, {"harness": KeyboardInterrupt()})
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines() == [f"gpu-check: interrupted; what was done is in {out}"]
    doc = (out / "gpu-validation.md").read_text()
    assert "| harness | interrupted |" in doc and "| study | done |" in doc
    assert "median 0.995 of 2 pairs" in doc and doc.count("| 99.5 | 100.0 | 0.995 |") == 2
    assert "docker not run" in doc


def test_a_study_llem_refuses_is_one_failed_stage_and_the_harness_still_runs(tmp_path):
    code, _, out = run_check(tmp_path, study_code=3)
    assert code == EXIT_RUNS_FAILED
    doc = (out / "gpu-validation.md").read_text()
    assert "| study | failed: llem exited 3: llem: error: runner local for pytorch: the engine does not import |" in doc
    assert "| harness | done |" in doc and "median 0.995 of 3 pairs" in doc
    assert "| runs completed | every run of the study | study not run | **FAIL** |" in doc


def test_a_failed_probe_stops_before_the_study_and_says_why(tmp_path):
    code, fake, out = run_check(tmp_path, {"probe": GpuCheckError("the probe exited 1: CUDA is not available")})
    assert code == EXIT_RUNS_FAILED
    doc = (out / "gpu-validation.md").read_text()
    assert "| probe | failed: the probe exited 1: CUDA is not available |" in doc
    assert "study not run; harness not run" in doc and "study" not in fake.seen
    assert not (out / "results").exists()


def test_the_default_work_dir_is_a_temp_dir_removed_at_the_end(tmp_path):
    made: list[FakeChildren] = []
    out = tmp_path / "out"
    code = main(["--out", str(out)], gpus=lambda: ([H100], None),
                children=lambda env: made.append(FakeChildren(env, out)) or made[-1])  # fmt: skip
    assert code == 0
    model = made[0].calls["build"]
    assert isinstance(model, Path) and out not in model.parents and not model.parent.exists()


# --- the children's real plumbing ---------------------------------------------------------


def test_children_see_an_absolute_pythonpath_with_llem_on_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["images/agent", "relative/deps"]))
    monkeypatch.chdir(REPO)
    env = child_env(H100, tmp_path)
    path = env["PYTHONPATH"].split(os.pathsep)
    assert path[:2] == [str(REPO / "images" / "agent"), str(REPO / "relative" / "deps")]
    assert str(REPO) in path and all(Path(p).is_absolute() for p in path)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-0" and env["HF_HUB_OFFLINE"] == "1"
    assert env["LLEM_BASELINE_CACHE"] == str(tmp_path / "baseline-cache") and env["LLEM_NVML_TRACE"] == "1"


def test_a_child_that_fails_is_one_line_with_its_last_words(tmp_path):
    ticks: list[int] = []
    children = Children(dict(os.environ), tick_s=0.05)
    log = tmp_path / "x.log"
    code = "import time; time.sleep(0.3); print('CUDA is not available'); raise SystemExit(4)"
    with pytest.raises(GpuCheckError, match=r"^the probe exited 4: CUDA is not available$"):
        children._run(["-c", code], log, lambda: ticks.append(1), what="the probe")
    assert len(ticks) >= 3  # followed while it ran, and once at its end


def test_a_checkout_holding_other_code_than_the_llem_imported_is_said(tmp_path, monkeypatch):
    """Run from a checkout while llem comes from elsewhere (a wheel): the same code is fine, an
    edit since the wheel was built is a warning in the document."""
    tree = tmp_path / "checkout"
    (tree / "orchestrator").mkdir(parents=True)
    shutil.copy(REPO / "orchestrator" / "gpucheck.py", tree / "orchestrator" / "gpucheck.py")
    monkeypatch.chdir(tree)
    where, warning = provenance()
    assert warning is None and where.startswith(str(REPO))
    (tree / "orchestrator" / "gpucheck.py").write_text("# edited after the wheel was built\n")
    warning = provenance()[1]
    assert warning is not None and f"llem in {REPO} differs from this checkout (orchestrator/gpucheck.py)" in warning


def test_harness_rows_survive_a_torn_last_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(PAIRS[0]) + "\n" + '{"agent_tokens_per_s": 9')
    assert read_rows(rows) == [PAIRS[0]]
    assert read_rows(tmp_path / "none.jsonl") == []
