"""``make gpu-check``'s plan, pure: windows sized from decode steps, the plan and its estimate,
and the validation study it runs.

Why the default plan looks as it does (it must fit a GPU lent for one command of 10 minutes):
- The mandated idle dominates: every run pays the thermal floor (30 s, the schema's minimum,
  which doubles as the loaded-idle measurement) whatever the model, so the plan has few runs:
  one cycle of the three batch sizes (``--cycles`` adds more where a site has the time).
- ``baseline: {strategy: cached}`` with a fresh cache in ``--work``: the first run measures
  idle power, the others reuse it (their rows say ``cache``); ``--fresh-baseline`` measures each.
- Windows are sized, not guessed: the probe times the agent's own engine on the real model at
  each batch size, and each experiment gets whole batches enough for a window of ``--window-s``
  (12 s) or more, so the batch-1 window is >= 10 s with 20% to spare for a slower agent.
  Output tokens rise above ``--tokens-out`` only when 200 built-in prompts could not fill a
  window at some batch size (a fast GPU): the same for every batch size, so J/token compares.
- The harness runs 3 ABBA pairs of two batches each (median of 3 survives one outlier).
- The model stays at ~1.0B: a decode step of a model this size is launch-bound on an H100, so
  a smaller one would not be faster, only less realistic; it builds on the GPU in seconds and
  loads from the page cache in a few more.

The estimate is a cost model with its constants below (seconds, one H100/H200); the document
records each stage's estimate next to what it took, so the first real run calibrates them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

BUILTIN_PROMPTS = 200  # llem_agent/data/builtin_prompts.jsonl
MAX_POSITIONS = 2048  # the model's max_position_embeddings (llem_agent.tiny_model)
TIME_LIMIT_S = 360.0  # what the default plan must fit on one H100/H200

# The cost model (seconds on one H100/H200). Per child: interpreter, torch + transformers
# imports (~5 s), CUDA context, then its work.
BUILD_S = 30.0  # tokenizer training, 1.0B initialised on the GPU, 2 GB of safetensors written
PROBE_S = 20.0  # model loaded on the GPU, two generates of 32 tokens per batch size
STUDY_START_S = 10.0  # llem: study, plan, preflight (the engine must import: a child), host facts
BASELINE_S = 10.0  # idle baseline (duration_seconds; the schema allows 5-120), once when cached
RUN_START_S = 15.0  # per run: the agent's interpreter, imports, CUDA context, model load
THERMAL_FLOOR_S = 30.0  # per run, after warm-up: the schema's minimum (loaded idle is sampled in it)
RUN_END_S = 3.0  # per run: result, telemetry sidecar and raw trace written, the agent exits
HARNESS_START_S = 20.0  # the harness child: imports and model load
HARNESS_BATCHES = 2  # batches per harness pass; each pass also runs one warm-up batch
HARNESS_IDLE_S = 1.0  # per agent pass: its thermal floor's loaded idle, 300 NVML reads back to back
# Decode steps assumed until the probe measures them: launch-bound, barely growing with batch.
ASSUMED_STEP_S = 0.020
ASSUMED_STEP_PER_SEQUENCE_S = 0.000125


class GpuCheckError(Exception):
    """A stage could not do its work: one line for the user and the document."""


# --- sizing: windows from measured decode steps (pure) ------------------------------------


@dataclass(frozen=True)
class Step:
    """One batch size's generation speed: time to the first token, then per decode step."""

    prefill_s: float
    step_s: float

    def batch_s(self, tokens_out: int) -> float:
        """Seconds one batch of ``tokens_out`` new tokens takes: prefill, then tokens_out - 1 steps."""
        return self.prefill_s + (tokens_out - 1) * self.step_s


def assumed_step(batch: int) -> Step:
    """The cost model's decode step for ``batch`` (prefill as long as one step)."""
    step_s = ASSUMED_STEP_S + ASSUMED_STEP_PER_SEQUENCE_S * batch
    return Step(step_s, step_s)


@dataclass(frozen=True)
class Window:
    """One experiment's measured work: ``n_batches`` whole batches of ``batch`` prompts."""

    batch: int
    n_batches: int
    batch_s: float

    @property
    def n_prompts(self) -> int:
        return self.batch * self.n_batches

    @property
    def window_s(self) -> float:
        return self.n_batches * self.batch_s


def choose_tokens_out(steps: dict[int, Step], tokens_out: int, window_s: float, tokens_in: int) -> int:
    """The fewest output tokens, at least ``tokens_out``, with which every batch size fills
    ``window_s`` from the built-in prompts: batch b has BUILTIN_PROMPTS // b whole batches."""
    need = tokens_out
    for batch, step in steps.items():
        most = BUILTIN_PROMPTS // batch
        if most < 1:
            raise GpuCheckError(f"batch size {batch} needs more than the {BUILTIN_PROMPTS} built-in prompts")
        need = max(need, math.ceil((window_s / most - step.prefill_s) / step.step_s) + 1)
        # The same arithmetic as size_windows, so rounding can never ask for one batch more.
        while math.ceil(window_s / step.batch_s(need)) > most:
            need += 1
    if tokens_in + need > MAX_POSITIONS:
        raise GpuCheckError(
            f"a {window_s:.0f} s window needs {need} output tokens per request, more than the model's "
            f"{MAX_POSITIONS} positions allow with {tokens_in} in: lower --window-s or the largest batch size"
        )
    return need


def size_windows(steps: dict[int, Step], tokens_out: int, window_s: float) -> list[Window]:
    """Each batch size's whole batches for a window of at least ``window_s``."""
    return [
        Window(b, max(1, math.ceil(window_s / s.batch_s(tokens_out))), s.batch_s(tokens_out))
        for b, s in sorted(steps.items())
    ]


# --- the plan and its estimate (pure) ------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the flags ask for: the study's shape, the harness, the idle periods."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    cycles: int = 1
    tokens_in: int = 128
    tokens_out: int = 128
    window_s: float = 12.0
    harness_pairs: int = 3
    harness_batch: int = 8
    thermal_floor_s: float = THERMAL_FLOOR_S
    baseline_s: float = BASELINE_S
    fresh_baseline: bool = False
    docker: bool = False

    @property
    def probed_sizes(self) -> tuple[int, ...]:
        extra = (self.harness_batch,) if self.harness_pairs else ()
        return tuple(sorted({*self.batch_sizes, *extra}))


@dataclass(frozen=True)
class Sizing:
    """The plan made concrete from decode steps (assumed, or measured by the probe)."""

    tokens_out: int
    windows: list[Window]
    harness: Window | None
    measured: bool


def size_plan(plan: Plan, steps: dict[int, Step], *, measured: bool) -> Sizing:
    """Output tokens and whole batches per experiment, and the harness's passes."""
    study_steps = {b: steps[b] for b in plan.batch_sizes}
    tokens_out = choose_tokens_out(study_steps, plan.tokens_out, plan.window_s, plan.tokens_in)
    harness = None
    if plan.harness_pairs:
        harness = Window(plan.harness_batch, HARNESS_BATCHES, steps[plan.harness_batch].batch_s(tokens_out))
    return Sizing(tokens_out, size_windows(study_steps, tokens_out, plan.window_s), harness, measured)


@dataclass(frozen=True)
class Cost:
    stage: str
    seconds: float
    detail: str


def run_cost_s(plan: Plan, w: Window) -> float:
    """One run: agent start and load, one warm-up batch, the thermal floor, the window, the end."""
    return RUN_START_S + w.batch_s + plan.thermal_floor_s + w.window_s + RUN_END_S


def study_cost_s(plan: Plan, sizing: Sizing) -> float:
    runs = len(sizing.windows) * plan.cycles
    baselines = runs if plan.fresh_baseline else 1
    return STUDY_START_S + baselines * plan.baseline_s + plan.cycles * sum(run_cost_s(plan, w) for w in sizing.windows)


def estimate(plan: Plan, sizing: Sizing, *, build: bool = True) -> list[Cost]:
    """Seconds per stage, from the cost model's constants and the sizing."""
    runs = len(sizing.windows) * plan.cycles
    costs = [
        Cost("build", BUILD_S if build else 0.0, "random-initialised Llama ~1.0B, built on the GPU"
             if build else "model already in --work"),
        Cost("probe", PROBE_S, f"decode steps at batch {', '.join(map(str, plan.probed_sizes))}"),
        Cost("study", study_cost_s(plan, sizing),
             f"llem start {STUDY_START_S:.0f} + idle baseline {plan.baseline_s:.0f} x "
             f"{runs if plan.fresh_baseline else 1} + {runs} runs (agent start + load {RUN_START_S:.0f}, "
             f"warm-up batch, thermal floor {plan.thermal_floor_s:.0f}, window, end {RUN_END_S:.0f})"),
    ]  # fmt: skip
    for w in sizing.windows:
        costs.append(
            Cost("", run_cost_s(plan, w) * plan.cycles,
                 f"  b{w.batch}: {w.n_batches} x {w.batch} prompts x {sizing.tokens_out} tokens; warm-up "
                 f"{w.batch_s:.1f} + window {w.window_s:.1f} s; x {plan.cycles} cycle(s)")
        )  # fmt: skip
    if sizing.harness is not None:
        h, passes, agent = sizing.harness, 2 * plan.harness_pairs + 1, plan.harness_pairs + 1
        costs.append(
            Cost("harness", HARNESS_START_S + passes * (h.batch_s + h.window_s) + agent * HARNESS_IDLE_S,
                 f"start + load {HARNESS_START_S:.0f} + {passes} passes x (warm-up {h.batch_s:.1f} + window "
                 f"{h.window_s:.1f}) + {agent} x {HARNESS_IDLE_S:.0f} idle sampling: {plan.harness_pairs} ABBA "
                 f"pairs at batch {h.batch}")
        )  # fmt: skip
    if plan.docker:
        costs.append(Cost("docker", study_cost_s(plan, sizing), "the study again through the docker runner"))
    return costs


def total_s(costs: list[Cost]) -> float:
    return sum(c.seconds for c in costs if c.stage)


def format_estimate(plan: Plan, sizing: Sizing, costs: list[Cost]) -> str:
    """The plan and its estimate, as printed before anything starts (and again, for what is
    left, once the probe has measured the decode steps)."""
    steps = (
        "measured by the probe, for what is left"
        if sizing.measured
        else "assumed for an H100/H200 until the probe measures them"
    )
    lines = [
        f"plan: batch sizes {', '.join(map(str, plan.batch_sizes))}; {plan.cycles} cycle(s); {plan.tokens_in} "
        f"tokens in, {sizing.tokens_out} out; windows of >= {plan.window_s:.0f} s; baseline "
        f"{'fresh' if plan.fresh_baseline else 'cached'}; harness {plan.harness_pairs} pair(s)",
        f"estimate, decode steps {steps}:",
        *(f"  {c.stage:<8} {c.seconds:6.1f} s  {c.detail}" for c in costs),
        f"  {'total':<8} {total_s(costs):6.1f} s",
    ]
    return "\n".join(lines)


def study_text(plan: Plan, sizing: Sizing, model: Path) -> str:
    """The validation study: each batch size with its sized prompts and one warm-up batch."""
    groups = "\n".join(
        f"    - {{pytorch.batch_size: {w.batch}, dataset.n_prompts: {w.n_prompts}, warmup.n_warmup: {w.batch}}}"
        for w in sizing.windows
    )
    strategy = "fresh" if plan.fresh_baseline else "cached"
    return f"""\
# Written by make gpu-check (orchestrator/gpucheck.py): windows sized to >= {plan.window_s:g} s.
name: gpu-check
model: {json.dumps(str(model))}
engine: pytorch
dtype: bfloat16
random_seed: 42
max_input_tokens: {plan.tokens_in}
max_output_tokens: {sizing.tokens_out}
decoder: {{do_sample: false, min_new_tokens: {sizing.tokens_out}}}   # a fixed amount of work per request
dataset: {{source: builtin, n_prompts: 1}}
warmup: {{thermal_floor_seconds: {plan.thermal_floor_s:g}}}
baseline: {{strategy: {strategy}, duration_seconds: {plan.baseline_s:g}}}
gpu_telemetry: true
sweep:
  batch:
{groups}
study_execution: {{n_cycles: {plan.cycles}, experiment_order: interleave, config_gap_seconds: 0, cycle_gap_seconds: 0}}
"""


def assumed_sizing(plan: Plan) -> Sizing:
    """The plan sized with the cost model's decode steps (what --dry-run and the first estimate show)."""
    return size_plan(plan, {b: assumed_step(b) for b in plan.probed_sizes}, measured=False)
