"""Runs INSIDE the pytorch image (mounted by test_engine.py): checks token accounting.

Prints one JSON object of findings; the host-side test asserts on it.
"""

import json
import sys

import torch

from llem_agent.contract import ExperimentConfig
from llem_agent.engines.pytorch import PyTorchEngine, generated_lengths

model = sys.argv[1]
config = ExperimentConfig.model_validate(
    {"model": model, "max_input_tokens": 12, "max_output_tokens": 8, "decoder": {"do_sample": False}}
)
engine = PyTorchEngine()
engine.load(config, model)
prompts = ["Hi", "Explain photosynthesis to a curious twelve-year-old in a few short paragraphs please."]
batch = engine.prepare(prompts)
observation = engine.generate(batch)
alone = [len(engine._tokenizer(p, truncation=True, max_length=12)["input_ids"]) for p in prompts]
eos = 7
print(
    json.dumps(
        {
            "input_tokens": observation.input_tokens,
            "input_tokens_alone": alone,
            "padded_width": int(batch["input_ids"].shape[1]),
            "output_tokens": observation.output_tokens,
            "token_times": observation.token_times_s,
            "lengths_eos": generated_lengths(torch.tensor([[1, 2, eos, eos], [eos, 0, 0, 0], [1, 2, 3, 4]]), {eos}),
            "effective": engine.effective(),
        }
    )
)
