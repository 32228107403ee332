"""Harness overhead inside one container: llem's agent vs a bare ``model.generate`` loop.

Both run the same batches (40 built-in prompts, batch 4, 32 tokens in, exactly 32 out) in
the same process on the same model, alternating which goes first (ABBA), so machine noise
and warm caches hit both alike.
Prints one JSON object: the output tokens/s of each side for every repetition; with
``--rows FILE`` each pair is also appended to FILE (one JSON line) as soon as it is measured,
so a harness cut short keeps the pairs it finished (make gpu-check reads them).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from llem_agent.contract import ExperimentConfig, RunRequest, config_hash
from llem_agent.energy import nvml_meter
from llem_agent.engines.pytorch import PyTorchEngine
from llem_agent.measure import batches, run_measurement
from llem_agent.prompts import load_prompts


class LoadedOnce:
    """The agent's own engine, loaded on the first call only.

    Every repetition then measures the same loaded, warmed model on both sides, so the ratio
    isolates what the harness adds (streamer, token accounting, progress) from load luck.
    """

    def __init__(self, engine: PyTorchEngine) -> None:
        self.engine = engine
        self._loaded = False

    def load(
        self, config: ExperimentConfig, model_source: str, adapter_source: str | None = None, dirs: object = None
    ) -> None:
        if not self._loaded:
            self.engine.load(config, model_source, adapter_source)
            self._loaded = True

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)


def main(
    model: str,
    repetitions: int,
    *,
    batch: int = 4,
    tokens: int = 32,
    n_prompts: int = 40,
    dtype: str | None = None,
    rows_file: Path | None = None,
    source: str = "builtin",
) -> None:
    config = ExperimentConfig.model_validate(
        {
            "model": model,
            "dtype": dtype,
            "max_input_tokens": tokens,
            "max_output_tokens": tokens,
            "dataset": {"source": source, "n_prompts": n_prompts},
            "decoder": {"do_sample": False, "min_new_tokens": tokens},
            # The floor is not slept (sleep is a no-op below), but on a GPU its loaded-idle power is
            # still sampled back to back: the schema's minimum keeps that to 300 NVML reads a pass.
            "warmup": {"n_warmup": batch, "thermal_floor_seconds": 30},
            "baseline": {"enabled": False},  # idle power is not what this compares
            "pytorch": {"batch_size": batch},
        }
    )
    request = RunRequest(run_id="bench", study_name="bench", cycle=1, config_hash=config_hash(config), config=config)
    engine = PyTorchEngine()
    once = LoadedOnce(engine)
    prompts = load_prompts(config.dataset, config.random_seed)

    def bare() -> float:
        # The very model and tokenizer the agent just used, and the same pre-tokenized batches.
        tokenizer, hf_model, device = engine._tokenizer, engine._model, engine._device
        encoded = [
            tokenizer(b, return_tensors="pt", padding=True, truncation=True, max_length=tokens).to(device)
            for b in batches(prompts, batch)
        ]
        kwargs = {
            "max_new_tokens": tokens,
            "min_new_tokens": tokens,
            "do_sample": False,
            "pad_token_id": tokenizer.pad_token_id,
        }
        with torch.inference_mode():
            hf_model.generate(**encoded[0], **kwargs)  # warmup batch, as the agent does
            engine.synchronize()
            start, generated = time.perf_counter(), 0
            for enc in encoded:
                out = hf_model.generate(**enc, **kwargs)
                generated += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
            engine.synchronize()
            return generated / (time.perf_counter() - start)

    def agent() -> float:
        meter = nvml_meter(sampler=None).open()  # the engine alone: no energy window on either side
        try:
            result = run_measurement(request, lambda name: once, meter, lambda phase: None, sleep=lambda s: None)
        finally:
            meter.close()
        return result.throughput.output_tokens_per_s

    agent()  # load the model once so the first bare() has one to use
    rows = []
    for i in range(repetitions):
        # Alternate which side goes first (ABBA), so warm caches favour neither.
        if i % 2 == 0:
            a, b = agent(), bare()
        else:
            b, a = bare(), agent()
        rows.append({"agent_tokens_per_s": a, "bare_tokens_per_s": b})
        if rows_file is not None:
            with rows_file.open("a", encoding="utf-8") as out:
                out.write(json.dumps(rows[-1]) + "\n")
    print(json.dumps({"torch_threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("repetitions", type=int, nargs="?", default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32, help="input and output tokens per request")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--prompts-file", default="builtin", help="a .jsonl prompt file (default: the built-in set)")
    parser.add_argument("--rows", type=Path, help="append each pair to this file as it is measured (JSON lines)")
    args = parser.parse_args()
    main(
        args.model,
        args.repetitions,
        batch=args.batch,
        tokens=args.tokens,
        n_prompts=args.prompts,
        dtype=args.dtype,
        rows_file=args.rows,
        source=args.prompts_file,
    )
