"""``make gpu-check``: prove llem's numbers on an NVIDIA GPU in one command of a few minutes.

On a host with a GPU, torch (CUDA), transformers and nvidia-ml-py, and neither Docker nor a
network: build a random-initialised Llama-style model of about 1.0B parameters (TinyLlama's
shape, tokenizer trained locally), time its decode steps (the probe), run a validation study
through the local runner (bfloat16; batch 1, 8 and 32), measure the harness against a bare
generate loop on the same model, and write the document: each target with what was measured.
Every stage is a child interpreter (the host never imports an engine), and after each the
document is rewritten with what is known so far and which stages did not run; the study's
manifest and results, the harness rows, one real NVML trace (a replay fixture for the unit
tests) and the children's logs land in ``--out`` as they are made, so a run cut short at any
moment keeps what it did. The model and scratch go to ``--work`` (a temp dir by default).
Without a GPU it exits 3 with one line; ``--dry-run`` prints the plan and its estimate anywhere.

The plan, its sizing and the cost model behind the estimate are in ``gpucheck_plan``; the
analysis of what was recorded and the document, in ``gpucheck_analysis``; the children that
do each stage's work, in ``gpucheck_children``; the stages in order, in ``gpucheck_stages``.
This module is the command line.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

from .devices import Gpu, nvml_gpus
from .errors import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_OK
from .gpucheck_analysis import MIN_WINDOW_S
from .gpucheck_children import Children, child_env, provenance
from .gpucheck_plan import (
    BUILTIN_PROMPTS,
    HARNESS_BATCHES,
    THERMAL_FLOOR_S,
    GpuCheckError,
    Plan,
    assumed_sizing,
    estimate,
    format_estimate,
    study_text,
)
from .gpucheck_stages import Check, Layout, _fail, _say, checkout


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        print(f"gpu-check: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    d = Plan()
    p = _Parser(prog="python -m orchestrator.gpucheck", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimate, start nothing")
    p.add_argument(
        "--out", type=Path, help="write everything here (default: docs/ and tests/fixtures/ of the checkout)"
    )
    p.add_argument("--work", type=Path, help="model and scratch (default: a temp dir, removed at the end)")
    p.add_argument("--batch-sizes", default=",".join(map(str, d.batch_sizes)), help="default %(default)s")
    p.add_argument("--cycles", type=int, default=d.cycles, help="default %(default)s")
    p.add_argument("--tokens-in", type=int, default=d.tokens_in, help="default %(default)s")
    p.add_argument("--tokens-out", type=int, default=d.tokens_out, help="at least; raised when a window needs it")
    p.add_argument("--window-s", type=float, default=d.window_s, help="planned window per run (default %(default)s)")
    p.add_argument("--harness-pairs", type=int, default=d.harness_pairs, help="ABBA pairs, 0: no harness")
    p.add_argument("--harness-batch", type=int, default=d.harness_batch, help="default %(default)s")
    p.add_argument("--thermal-floor-s", type=float, default=d.thermal_floor_s, help="per run, >= 30")
    p.add_argument("--baseline-s", type=float, default=d.baseline_s, help="idle baseline, 5-120 s")
    p.add_argument("--fresh-baseline", action="store_true", help="measure idle power before every run")
    p.add_argument("--docker", action="store_true", help="also run the study through the docker runner")
    return p.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    """The plan the flags ask for, or a one-line GpuCheckError."""
    try:
        sizes = tuple(int(x) for x in args.batch_sizes.split(","))
    except ValueError:
        raise GpuCheckError(f"--batch-sizes expects sizes such as 1,8,32, got {args.batch_sizes!r}") from None
    checks = [
        (bool(sizes) and len(set(sizes)) == len(sizes) and all(1 <= b <= BUILTIN_PROMPTS for b in sizes),
         f"--batch-sizes: distinct sizes from 1 to {BUILTIN_PROMPTS}"),
        (args.cycles >= 1, "--cycles must be at least 1"),
        (args.tokens_in >= 1, "--tokens-in must be at least 1"),
        (args.tokens_out >= 2, "--tokens-out must be at least 2"),
        (args.window_s >= MIN_WINDOW_S, f"--window-s must be at least {MIN_WINDOW_S:.0f} (the target)"),
        (args.harness_pairs >= 0, "--harness-pairs must be 0 or more"),
        (1 <= args.harness_batch <= BUILTIN_PROMPTS // HARNESS_BATCHES,
         f"--harness-batch must be 1 to {BUILTIN_PROMPTS // HARNESS_BATCHES}"),
        (args.thermal_floor_s >= THERMAL_FLOOR_S, f"--thermal-floor-s must be at least {THERMAL_FLOOR_S:.0f}"),
        (5 <= args.baseline_s <= 120, "--baseline-s must be 5 to 120"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise GpuCheckError(message)
    return Plan(sizes, args.cycles, args.tokens_in, args.tokens_out, args.window_s, args.harness_pairs,
                args.harness_batch, args.thermal_floor_s, args.baseline_s, args.fresh_baseline,
                args.docker)  # fmt: skip


def dry_run(plan: Plan, layout: Layout | None) -> int:
    """Print the plan and its estimate with assumed decode steps; the study goes through llem's loader."""
    from .study import load_study

    sizing = assumed_sizing(plan)
    print(format_estimate(plan, sizing, estimate(plan, sizing)))
    with tempfile.TemporaryDirectory(prefix="llem-gpu-check-") as tmp:
        path = Path(tmp) / "gpu-check.yaml"
        path.write_text(study_text(plan, sizing, Path(tmp) / "llama-1b"), encoding="utf-8")
        study = load_study(path)
    n = len(study.experiments)
    print(f"study: {n} experiments x {plan.cycles} cycle(s) = {n * plan.cycles} runs (checked by llem's loader)")
    where = f"into {layout.evidence} (document {layout.doc})" if layout else "nowhere: no --out and no checkout here"
    print(f"writes {where}; nothing was started (--dry-run)")
    return EXIT_OK


def main(
    argv: list[str] | None = None,
    gpus: Callable[[], tuple[list[Gpu], str | None]] = nvml_gpus,
    children: Callable[[dict[str, str]], Children] = Children,
) -> int:
    """``python -m orchestrator.gpucheck``; the GPU list and the children are seams for the tests."""
    args = _parse(argv)
    root = checkout()
    layout = Layout.inside(args.out.resolve()) if args.out else Layout.repository(root) if root else None
    try:
        plan = plan_from(args)
        assumed = assumed_sizing(plan)  # a plan that cannot be sized is refused before anything starts
        if args.work and args.out and args.work.resolve().is_relative_to(args.out.resolve()):
            raise GpuCheckError("--work must be outside --out (the model is 2 GB; --out is what comes back)")
        if args.dry_run:
            return dry_run(plan, layout)
    except GpuCheckError as exc:
        return _fail(f"error: {exc}", EXIT_CONFIG)
    found, why = gpus()
    if not found:
        return _fail(f"no NVIDIA GPU here ({why}); run it on a GPU machine", EXIT_ENVIRONMENT)
    if any(g.mig for g in found):
        return _fail("a GPU is in MIG mode; llem measures whole GPUs (disable MIG first)", EXIT_ENVIRONMENT)
    if layout is None:
        return _fail("error: --out DIR is needed outside a llem checkout", EXIT_CONFIG)
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="llem-gpu-check-"))
    layout.evidence.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    check = Check(plan, layout, found, work, children(child_env(found[0], work)))
    llem_from, warning = provenance()
    check.facts = {
        "command": " ".join(["python -m orchestrator.gpucheck", *(sys.argv[1:] if argv is None else argv)]),
        "gpus": ", ".join(f"{g.index}: {g.name}" for g in found),
        "host": f"{platform.node()} ({platform.platform()})",
        "llem_from": llem_from,
        "warning": warning,
        "tokens_in": plan.tokens_in,
        "batch_sizes": ", ".join(map(str, plan.batch_sizes)),
        "cycles": plan.cycles,
        "baseline": "measured before every run" if plan.fresh_baseline else "measured once, cached for the others",
    }
    costs = estimate(plan, assumed, build=not (check.model / "config.json").exists())
    check.set_estimate(costs)
    print(format_estimate(plan, assumed, costs), flush=True)
    if warning:
        _say(f"warning: {warning}")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the check like Ctrl-C
    try:
        return check.execute(root)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
