"""Harness overhead of the vLLM agent inside its image: llem's agent vs a bare ``LLM.generate`` loop.

Both sides run the same pre-tokenized batches (``max_num_seqs`` prompts each, exactly
``--tokens`` new tokens per request) with the same ``SamplingParams`` on the same loaded
``vllm.LLM`` object, in one process, alternating which goes first (ABBA). Each side warms up
on the same held-out prompts and empties the prefix cache before its window, as the agent
does, so neither is served the other's prefills from the cache.
Prints one JSON object: the output tokens/s of each side for every repetition.
"""

import argparse
import json
import time
from typing import Any

from llem_agent.contract import ExperimentConfig, RunRequest, config_hash
from llem_agent.energy import nvml_meter
from llem_agent.engines.vllm import VLLMEngine
from llem_agent.measure import batches, run_measurement
from llem_agent.prompts import load_prompt_sets


class LoadedOnce:
    """The agent's own vLLM engine, loaded on the first call only: every repetition measures
    the same engine on both sides, so the ratio isolates what the harness adds."""

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine
        self._loaded = False

    def load(self, config: ExperimentConfig, model_source: str, adapter_source: Any = None, dirs: Any = None) -> None:
        if not self._loaded:
            self.engine.load(config, model_source, adapter_source)
            self._loaded = True

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)


def main(model: str, repetitions: int, *, batch: int, tokens: int, n_prompts: int, source: str = "builtin") -> None:
    config = ExperimentConfig.model_validate(
        {
            "model": model,
            "engine": "vllm",
            "max_input_tokens": tokens,
            "max_output_tokens": tokens,
            "dataset": {"source": source, "n_prompts": n_prompts},
            "decoder": {"do_sample": False, "min_new_tokens": tokens},
            "warmup": {"n_warmup": batch, "thermal_floor_seconds": 30},  # the floor only runs on a GPU
            "baseline": {"enabled": False},
            "vllm": {
                "engine": {"max_num_seqs": batch, "max_model_len": 256, "gpu_memory_utilization": 0.2,
                           "enforce_eager": True}
            },
        }
    )  # fmt: skip
    request = RunRequest(run_id="bench", study_name="bench", cycle=1, config_hash=config_hash(config), config=config)
    engine = VLLMEngine()
    once = LoadedOnce(engine)
    sets = load_prompt_sets(config.dataset, config.random_seed)

    def bare() -> float:
        llm, sampling = engine._llm, engine._sampling
        warm = [engine.prepare(sets.warmup[:batch])]
        measured = [engine.prepare(b) for b in batches(sets.measured, batch)]
        llm.generate(warm[0], sampling, use_tqdm=False)  # one warm-up batch, as the agent runs
        llm.reset_prefix_cache()
        start, generated = time.perf_counter(), 0
        for prompts in measured:
            for out in llm.generate(prompts, sampling, use_tqdm=False):
                generated += sum(len(c.token_ids) for c in out.outputs)
        return generated / (time.perf_counter() - start)

    def agent() -> float:
        meter = nvml_meter(sampler=None).open()  # no energy window on either side
        try:
            result = run_measurement(request, lambda name: once, meter, lambda phase: None, sleep=lambda s: None)
        finally:
            meter.close()
        return result.throughput.output_tokens_per_s

    agent()  # load once, so the first bare() has the engine
    rows = []
    for i in range(repetitions):
        if i % 2 == 0:
            a, b = agent(), bare()
        else:
            b, a = bare(), agent()
        rows.append({"agent_tokens_per_s": a, "bare_tokens_per_s": b})
    print(json.dumps({"vllm": engine.environment().engine_version, "rows": rows}))


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("repetitions", type=int, nargs="?", default=11)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32, help="input and output tokens per request")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--prompts-file", default="builtin", help="a .jsonl prompt file (default: the built-in set)")
    args = parser.parse_args()
    main(
        args.model, args.repetitions, batch=args.batch, tokens=args.tokens, n_prompts=args.prompts,
        source=args.prompts_file,
    )  # fmt: skip
