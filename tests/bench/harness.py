"""Harness overhead inside one container: llem's agent vs a bare ``model.generate`` loop.

Both run the same batches (40 built-in prompts, batch 4, 32 tokens in, exactly 32 out) in
the same process on the same loaded model, alternating, so machine noise hits both alike.
Prints one JSON object: the output tokens/s of each side for every repetition.
"""

import json
import sys
import time

import torch

from llem_agent.contract import ExperimentConfig, RunRequest, config_hash
from llem_agent.energy import nvml_meter
from llem_agent.engines.pytorch import PyTorchEngine
from llem_agent.measure import batches, run_measurement
from llem_agent.prompts import load_prompts


def main(model: str, repetitions: int) -> None:
    config = ExperimentConfig.model_validate(
        {
            "model": model,
            "max_input_tokens": 32,
            "max_output_tokens": 32,
            "dataset": {"source": "builtin", "n_prompts": 40},
            "decoder": {"do_sample": False, "min_new_tokens": 32},
            "warmup": {"n_warmup": 4},
            "pytorch": {"batch_size": 4},
        }
    )
    request = RunRequest(run_id="bench", study_name="bench", cycle=1, config_hash=config_hash(config), config=config)
    engine = PyTorchEngine()
    prompts = load_prompts(config.dataset, config.random_seed)

    def bare() -> float:
        # The very model and tokenizer the agent just used, and the same pre-tokenized batches.
        tokenizer, hf_model = engine._tokenizer, engine._model
        encoded = [
            tokenizer(b, return_tensors="pt", padding=True, truncation=True, max_length=32) for b in batches(prompts, 4)
        ]
        kwargs = {
            "max_new_tokens": 32,
            "min_new_tokens": 32,
            "do_sample": False,
            "pad_token_id": tokenizer.pad_token_id,
        }
        with torch.inference_mode():
            hf_model.generate(**encoded[0], **kwargs)  # warmup batch, as the agent does
            start, tokens = time.perf_counter(), 0
            for enc in encoded:
                out = hf_model.generate(**enc, **kwargs)
                tokens += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
            return tokens / (time.perf_counter() - start)

    def agent() -> float:
        result = run_measurement(request, lambda name: engine, nvml_meter().open(), lambda phase: None)
        return result.throughput.output_tokens_per_s

    rows = []
    for _ in range(repetitions):
        rows.append({"agent_tokens_per_s": agent(), "bare_tokens_per_s": bare()})
    print(json.dumps({"torch_threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
