"""Runs INSIDE the pytorch image (mounted by test_engine.py): 004 fields really reach generate.

Prints one JSON object of findings; the host-side test asserts on it.
"""

import json
import sys

from llem_agent.contract import ExperimentConfig
from llem_agent.engines.pytorch import PyTorchEngine

model, adapter = sys.argv[1], sys.argv[2]
PROMPTS = ["Explain photosynthesis to a curious twelve-year-old.", "Write a haiku about the sea."]


def run(extra: dict, adapter_source: str | None = None, prompts: list[str] = PROMPTS) -> dict:
    rest = {k: v for k, v in extra.items() if k != "pytorch"}
    section = {"batch_size": len(prompts), **extra.get("pytorch", {})}
    config = ExperimentConfig.model_validate(
        {"model": model, "max_input_tokens": 16, "max_output_tokens": 8, "decoder": {"do_sample": False},
         "pytorch": section, **rest}
    )  # fmt: skip
    engine = PyTorchEngine()
    engine.load(config, model, adapter_source)
    observation = engine.generate(engine.prepare(prompts))
    enc = engine.prepare(prompts)
    ids = engine._model.generate(**enc, **engine._generate_kwargs())[:, enc["input_ids"].shape[1] :]
    return {
        "effective": engine.effective(),
        "output_tokens": observation.output_tokens,
        "times": [len(t) for t in observation.token_times_s],
        "untimed_reason": observation.untimed_reason,
        "untimed_end_s": observation.untimed_end_s,
        "ids": ids.tolist(),
        "model_class": type(engine._model).__name__,
        "parameters": engine.n_parameters(),
        "passthrough": engine.passthrough(),
    }


found = {
    "base": run({}),
    "beam": run({"pytorch": {"num_beams": 3, "early_stopping": True}}),
    "single": run({}, prompts=PROMPTS[:1]),
    "lookup": run({"pytorch": {"prompt_lookup_num_tokens": 3}}, prompts=PROMPTS[:1]),
    "static": run({"pytorch": {"cache_implementation": "static"}}),
    "ngram": run({"pytorch": {"no_repeat_ngram_size": 2}}),
    "lora": run({"lora": {"adapter_path": adapter}}, adapter),
    "lora_merged": run({"lora": {"adapter_path": adapter, "merge_weights": True}}, adapter),
    # passthrough_kwargs: a config override to from_pretrained (one layer of two), and a
    # GenerationConfig option to generate (every token ends the sequence: one token a request).
    "passthrough": run({"passthrough_kwargs": {"n_layer": 1, "eos_token_id": list(range(5000))}}),
}
print(json.dumps(found))
