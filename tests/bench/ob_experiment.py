"""optimum-benchmark doing the work of the llem benchmark experiment (run inside its image).

Batch 4, 32 input tokens, exactly 32 new tokens, 10 measured batches (= 40 prompts),
one warmup batch. The inline launcher is optimum-benchmark's cheapest setting, which makes
the comparison conservative for llem.
"""

import sys
import time

from optimum_benchmark import Benchmark, BenchmarkConfig, InferenceConfig, InlineConfig, PyTorchConfig

if __name__ == "__main__":
    start = time.perf_counter()
    config = BenchmarkConfig(
        name="llem-comparison",
        launcher=InlineConfig(),
        scenario=InferenceConfig(
            iterations=10,
            duration=0,
            warmup_runs=1,
            latency=True,
            input_shapes={"batch_size": 4, "sequence_length": 32},
            generate_kwargs={"max_new_tokens": 32, "min_new_tokens": 32},
        ),
        backend=PyTorchConfig(model=sys.argv[1], device="cpu", task="text-generation", no_weights=False),
    )
    report = Benchmark.launch(config)
    print(f"ob_inner_s={time.perf_counter() - start:.3f}", flush=True)
