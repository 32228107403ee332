"""Runs INSIDE the pytorch image (mounted by test_engine.py): 004 fields really reach generate.

Every finding is of the engine's own generate call (recorded as it ran), never of a second call.

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
    seen: dict = {"ids": None, "cache": None, "assisted": False}
    real_generate = engine._model.generate

    def recording_generate(**kwargs):
        # What the engine's own generate call produced and how, not a second call of ours.
        kwargs = {**kwargs, "return_dict_in_generate": True}
        out = real_generate(**kwargs)
        seen["ids"] = out.sequences[:, kwargs["input_ids"].shape[1] :].tolist()
        seen["cache"] = type(getattr(out, "past_key_values", None)).__name__
        return out.sequences

    engine._model.generate = recording_generate
    candidates = getattr(engine._model, "_get_candidate_generator", None)
    if candidates is not None:

        def recording_candidates(*args, **kwargs):
            seen["assisted"] = True  # prompt lookup decoding took the assisted-generation path
            return candidates(*args, **kwargs)

        engine._model._get_candidate_generator = recording_candidates
    observation = engine.generate(engine.prepare(prompts))
    return {
        "effective": engine.effective(),
        "output_tokens": observation.output_tokens,
        "times": [len(t) for t in observation.token_times_s],
        "untimed_reason": observation.untimed_reason,
        "untimed_end_s": observation.untimed_end_s,
        "ids": seen["ids"],
        "cache": seen["cache"],
        "assisted": seen["assisted"],
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
