"""``make gpu-check``'s children: each stage's real work in a child interpreter (the host never
imports an engine), the environment the children get, and where llem's packages came from. The
stages call them through ``Children``, the seam the tests fake."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llem_agent.contract import RAW_TRACE_ENV, ExperimentResult

from .devices import Gpu
from .gpucheck_plan import GpuCheckError, Step, Window

_PR_SET_PDEATHSIG = 1


PROBE_CODE = """\
import json, sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"CUDA is not available to torch {torch.__version__}")
from llem_agent.contract import ExperimentConfig
from llem_agent.engines.pytorch import PyTorchEngine
from llem_agent.prompts import load_prompts
model, tokens_in, sizes, k = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), 32
config = ExperimentConfig.model_validate({"model": model, "dtype": "bfloat16", "max_input_tokens": tokens_in,
    "max_output_tokens": k, "decoder": {"do_sample": False, "min_new_tokens": k},
    "dataset": {"source": "builtin", "n_prompts": max(sizes)}})
engine = PyTorchEngine()
engine.load(config, model)
prompts = load_prompts(config.dataset, config.random_seed)
steps = {}
for b in sizes:
    batch = engine.prepare(prompts[:b])
    engine.generate(batch)  # the first call of a shape pays for kernels and allocations
    times = engine.generate(batch).token_times_s[0]
    steps[b] = {"prefill_s": times[0], "step_s": (times[-1] - times[0]) / (len(times) - 1)}
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0),
                  "steps": steps}))
"""
BUILD_CODE = """\
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"CUDA is not available to torch {torch.__version__}")
from llem_agent.tiny_model import main
main([sys.argv[1], "--arch", "llama", "--size", "1b"])
"""


@dataclass(frozen=True)
class HarnessJob:
    """tests/bench/harness.py on the model: ``pairs`` ABBA pairs of ``window``'s batches."""

    script: Path
    model: Path
    window: Window
    tokens: int
    pairs: int


@dataclass(frozen=True)
class Probe:
    torch: str
    cuda: str
    device: str
    steps: dict[int, Step]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: a child gets SIGKILL when the check dies, however it dies, so nothing it started
    (llem, and through llem the agent) goes on measuring after it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Children:
    """Each stage's work in a child interpreter, its output in the stage's log. ``tick`` is
    called every couple of seconds while a child runs (the document follows the evidence)."""

    def __init__(self, env: dict[str, str], tick_s: float = 2.0) -> None:
        self.env, self.tick_s = env, tick_s

    def _run(self, args: list[str], log: Path, tick: Callable[[], None] = lambda: None, what: str = "") -> int:
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, *args], env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no locks taken; nothing outlives the check
            )  # fmt: skip
            try:
                while True:
                    try:
                        code = process.wait(timeout=self.tick_s)
                        break
                    except subprocess.TimeoutExpired:
                        tick()
            finally:
                if process.poll() is None:  # interrupted: llem stops its run and marks it, then we go
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        process.kill()
        tick()
        if code != 0 and what:
            raise GpuCheckError(f"{what} exited {code}: {_last_line(log)}")
        return code

    def build(self, model_dir: Path, log: Path) -> None:
        self._run(["-c", BUILD_CODE, str(model_dir)], log, what="the model build")

    def probe(self, model_dir: Path, sizes: tuple[int, ...], tokens_in: int, log: Path) -> Probe:
        self._run(["-c", PROBE_CODE, str(model_dir), str(tokens_in), json.dumps(list(sizes))], log, what="the probe")
        data = json.loads(_last_line(log))
        steps = {int(b): Step(float(s["prefill_s"]), float(s["step_s"])) for b, s in data["steps"].items()}
        return Probe(str(data["torch"]), str(data["cuda"]), str(data["device"]), steps)

    def study(self, study: Path, results: Path, runner: str, gpu: int, log: Path, tick: Callable[[], None]) -> int:  # noqa: PLR0917
        """``llem run`` in a child; its exit code (llem's own one-line errors are in the log)."""
        argv = ["-m", __package__ or "llem", "run", str(study), "--runner", runner, "--results-dir", str(results)]
        return self._run([*argv, "--gpus", str(gpu)], log, tick)

    def harness(self, job: HarnessJob, rows: Path, log: Path, tick: Callable[[], None]) -> None:
        args = [str(job.script), str(job.model), str(job.pairs), "--batch", str(job.window.batch),
                "--tokens", str(job.tokens), "--prompts", str(job.window.n_prompts), "--dtype", "bfloat16",
                "--rows", str(rows)]  # fmt: skip
        self._run(args, log, tick, what="the harness")


def _last_line(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else "no output"


def _agent_package() -> Path:
    """Where llem_agent was imported from (seen through its contract: the one part the host imports)."""
    return Path(sys.modules[ExperimentResult.__module__].__file__ or ".").resolve().parents[1]


def child_env(gpu: Gpu, work: Path) -> dict[str, str]:
    """The children's environment: llem and its dependencies on an ABSOLUTE PYTHONPATH (the agent
    starts in its run directory), no hub, the first GPU, a baseline cache of this check's own."""
    given = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ours = [str(Path(__file__).resolve().parents[1]), str(_agent_package().parent)]
    env = dict(os.environ) | {
        "PYTHONPATH": os.pathsep.join(dict.fromkeys([*given, *ours])),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LLEM_BASELINE_CACHE": str(work / "baseline-cache"),
        RAW_TRACE_ENV: "1",
    }
    return (env | {"CUDA_VISIBLE_DEVICES": gpu.uuid}) if gpu.uuid else env


def provenance() -> tuple[str, str | None]:
    """Where llem's two packages were imported from, and a warning when the checkout here holds
    other code than they do (a stale llem wheel in front of the working tree on PYTHONPATH:
    ``python -m`` takes orchestrator from the current directory, llem_agent from PYTHONPATH)."""
    tree = Path.cwd().resolve()
    imported = {"orchestrator": Path(__file__).resolve().parent, "images/agent/llem_agent": _agent_package()}
    where = ", ".join(dict.fromkeys(str(path.parent) for path in imported.values()))
    for package, installed in imported.items():
        source = tree / package
        if not source.is_dir() or installed == source.resolve():
            continue
        for path in sorted(source.rglob("*.py")):
            copy = installed / path.relative_to(source)
            if not copy.exists() or copy.read_bytes() != path.read_bytes():
                return where, (
                    f"llem in {installed.parent} differs from this checkout ({path.relative_to(tree)}): "
                    "rebuild the wheels (make device-wheels) or put the checkout first on PYTHONPATH"
                )
    return where, None
