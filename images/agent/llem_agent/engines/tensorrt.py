"""TensorRT-LLM engine through the ``tensorrt_llm.LLM`` API.

``tensorrt.engine: tensorrt`` builds (or reuses) a compiled TensorRT engine; otherwise the
PyTorch flow runs. Compiled engines are cached on the engine-cache volume under a key of every
setting that shapes the build and of the GPU and TensorRT versions it targets, so a second run
of the same experiment loads instead of building; the build time is reported apart
(``effective.engine_build_s``), never inside the measured window. ``tensorrt.engine_path``
names a prebuilt engine and skips the build.
Per-request first and last token times come from the request perf metrics (the LLM and each
SamplingParams ask for them); where none come back, TTFT is reported missing with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from llem_agent.contract import AgentEnvironment, ExperimentConfig
from llem_agent.engines.args import (
    check_passthrough,
    route_passthrough,
    tensorrt_llm_kwargs,
    tensorrt_sampling_kwargs,
)
from llem_agent.engines.base import RunDirs
from llem_agent.metrics import BatchObservation
from llem_agent.modelfiles import count_parameters, local_model_dir

# TensorRT-LLM starts MPI workers (tensor / pipeline parallelism, and its executor): with no
# network but loopback (llem's containers run with network none), Open MPI must keep to lo.
# Set before tensorrt_llm is imported (MPI reads them at init); never over the user's own.
MPI_LOOPBACK_ENV = {"OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "lo"}

_BUILD_KEYS = ("max_batch_size", "tensor_parallel_size", "pipeline_parallel_size", "max_input_len", "max_seq_len",
               "max_num_tokens", "dtype", "quant_config", "fast_build")  # fmt: skip


def build_key(kwargs: dict[str, Any], model_source: str, target: dict[str, str]) -> str:
    """Cache key of a compiled engine: the model, every build setting, and what the engine was
    compiled for and with (``target``: GPU name, compute capability, TensorRT and TensorRT-LLM
    versions). A TensorRT engine runs only on the GPU architecture and TensorRT it was built
    for, so none of these may be shared across."""
    shaped = {k: kwargs.get(k) for k in _BUILD_KEYS} | {"model": model_source} | dict(target)
    return hashlib.sha256(json.dumps(shaped, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_target() -> dict[str, str]:
    """The GPU and toolchain a compiled engine is built for (this container's first GPU)."""
    import tensorrt
    import tensorrt_llm
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
        "tensorrt": str(tensorrt.__version__),
        "tensorrt_llm": str(tensorrt_llm.__version__),
    }


def _objects(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The plain dicts of args.py as TensorRT-LLM's own config classes and enums."""
    from tensorrt_llm.llmapi import (
        CapacitySchedulerPolicy,
        ContextChunkingPolicy,
        KvCacheConfig,
        QuantAlgo,
        QuantConfig,
        SchedulerConfig,
    )

    out = dict(kwargs)
    if "kv_cache_config" in out:
        out["kv_cache_config"] = KvCacheConfig(**out["kv_cache_config"])
    if "scheduler_config" in out:
        sched = dict(out["scheduler_config"])
        if "capacity_scheduler_policy" in sched:
            sched["capacity_scheduler_policy"] = CapacitySchedulerPolicy[sched["capacity_scheduler_policy"]]
        if "context_chunking_policy" in sched:
            sched["context_chunking_policy"] = ContextChunkingPolicy[sched["context_chunking_policy"]]
        out["scheduler_config"] = SchedulerConfig(**sched)
    if "quant_config" in out:
        quant = dict(out["quant_config"])
        for key in ("quant_algo", "kv_cache_quant_algo"):
            if key in quant:
                quant[key] = QuantAlgo[quant[key]]
        out["quant_config"] = QuantConfig(**quant)
    return out


class TensorRTEngine:
    def __init__(self) -> None:
        self._config: ExperimentConfig | None = None
        self._llm: Any = None
        self._sampling: Any = None
        self._tokenizer: Any = None
        self._source = ""
        self._build_s: float | None = None
        self._cache_hit: bool | None = None
        self._passthrough: dict[str, str] = {}

    def load(
        self,
        config: ExperimentConfig,
        model_source: str,
        adapter_source: str | None = None,
        dirs: RunDirs | None = None,
    ) -> None:
        for key, value in MPI_LOOPBACK_ENV.items():
            os.environ.setdefault(key, value)
        from tensorrt_llm import SamplingParams

        dirs = dirs or RunDirs()
        self._config, self._source = config, model_source
        kwargs = tensorrt_llm_kwargs(
            config, model_source, engine_cache_dir=dirs.engine_cache, prebuilt_engine_dir=dirs.prebuilt_engine
        )
        backend = kwargs.pop("backend", None)
        routes = route_passthrough(config.passthrough_kwargs, _passthrough_targets, fallback="LLM")
        self._passthrough = {key: target for target, given in routes.items() for key in given}
        check_passthrough(config, routes, {"LLM": kwargs, "SamplingParams": tensorrt_sampling_kwargs(config)})
        kwargs.update(routes.get("LLM", {}))  # TensorRT-LLM's arguments refuse a name they do not take
        sampling = tensorrt_sampling_kwargs(config) | routes.get("SamplingParams", {})
        self._sampling = SamplingParams(**sampling, return_perf_metrics=True)
        if backend == "tensorrt":
            from tensorrt_llm._tensorrt_engine import LLM

            prebuilt = dirs.prebuilt_engine is not None or (config.tensorrt is not None and config.tensorrt.engine_path)
            cache_root = Path(dirs.engine_cache) if dirs.engine_cache else None
            cache = cache_root / build_key(kwargs, model_source, build_target()) if cache_root else None
            self._cache_hit = bool(prebuilt) or (cache is not None and (cache / "config.json").exists())
            if not prebuilt and self._cache_hit and cache is not None:
                kwargs["model"] = str(cache)
            if "workspace" in kwargs:
                Path(kwargs["workspace"]).mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            self._llm = LLM(**_objects(kwargs))
            if not self._cache_hit and cache is not None:
                self._llm.save(str(cache))
            self._build_s = None if self._cache_hit else time.perf_counter() - start
        else:
            from tensorrt_llm import LLM

            self._llm = LLM(**_objects(kwargs))
        self._tokenizer = self._llm.tokenizer

    def batch_size(self) -> int:
        assert self._config is not None
        section = self._config.tensorrt
        return section.max_batch_size if section and section.max_batch_size else 256

    def prepare(self, prompts: list[str]) -> list[list[int]]:
        assert self._config is not None
        limit = self._config.max_input_tokens
        return [list(ids[:limit] if limit else ids) for ids in (self._tokenizer.encode(p) for p in prompts)]

    def generate(self, batch: Any) -> BatchObservation:
        start = time.perf_counter()
        outputs = self._llm.generate(batch, self._sampling, use_tqdm=False)
        end = time.perf_counter() - start
        inputs, outs, times = [], [], []
        cached: list[int | None] = []
        for prompt, out in zip(batch, outputs, strict=True):
            n = sum(len(c.token_ids) for c in out.outputs)
            perf = getattr(out.outputs[0], "request_perf_metrics", None)
            timing = getattr(perf, "timing_metrics", None)
            if timing is not None and timing.first_token_time and timing.arrival_time:
                first = _seconds(timing.first_token_time - timing.arrival_time)
                last = first + _seconds(timing.last_token_time - timing.first_token_time)
                times.append([first, last][: min(n, 2)])
            else:  # no perf metrics: TTFT unknown (never the batch time); it ended by the call's return
                times.append([])
            inputs.append(len(prompt))
            outs.append(n)
            cached.append(_cached_tokens(out, perf, len(prompt)))
        return BatchObservation(
            input_tokens=inputs,
            output_tokens=outs,
            token_times_s=times,
            complete=False,
            untimed_end_s=end,
            cached_tokens=cached,
            static=False,  # continuous batching
        )

    def synchronize(self) -> None:
        """``LLM.generate`` returns once every request has finished."""

    def prefix_cache(self) -> bool | None:
        """KV-block reuse (``kv_cache_config.enable_block_reuse``, on by TensorRT-LLM's default)."""
        kv = self._config.tensorrt.kv_cache if self._config and self._config.tensorrt else None
        reuse = getattr(kv, "enable_block_reuse", None)
        return True if reuse is None else bool(reuse)

    def reset_prefix_cache(self) -> bool:
        return False  # the LLM API offers no reset: disjoint warm-up prompts are what keeps it cold

    def effective(self) -> dict[str, str | int | float | bool | None]:
        section = self._config.tensorrt if self._config else None
        return {
            "device": "cuda",
            "batch_size": self.batch_size(),
            "backend": section.engine if section and section.engine else "pytorch",
            "engine_build_s": self._build_s,
            "engine_cache_hit": self._cache_hit,
        }

    def passthrough(self) -> dict[str, str]:
        return dict(self._passthrough)

    def n_parameters(self) -> int | None:
        directory = local_model_dir(self._source)
        return count_parameters(directory) if directory else None

    def peak_device_memory_mb(self) -> float | None:
        return None  # NVML telemetry records device memory

    def environment(self) -> AgentEnvironment:
        import tensorrt_llm
        import torch
        import transformers

        return AgentEnvironment(
            python=platform.python_version(),
            engine_version=str(tensorrt_llm.__version__),
            torch_version=torch.__version__,
            transformers_version=transformers.__version__,
            device="cuda",
            device_names=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            cuda_runtime=torch.version.cuda,
        )


def _seconds(value: Any) -> float:
    """TensorRT-LLM timing deltas are datetime.timedelta or float seconds, by version."""
    return float(value.total_seconds()) if hasattr(value, "total_seconds") else float(value)


def _passthrough_targets() -> dict[str, frozenset[str]]:
    """``SamplingParams`` takes its own fields; the rest goes to ``LLM()``."""
    import dataclasses

    from tensorrt_llm import SamplingParams

    return {"SamplingParams": frozenset(f.name for f in dataclasses.fields(SamplingParams))}


def _cached_tokens(out: Any, perf: Any, prompt_tokens: int) -> int | None:
    """Prompt tokens TensorRT-LLM reused from its KV blocks: the output's ``cached_tokens`` where
    this version has it, else reused blocks x tokens per block (capped at the prompt)."""
    direct = getattr(out, "cached_tokens", None)
    if isinstance(direct, int):
        return direct
    reused = getattr(getattr(perf, "kv_cache_metrics", None), "num_reused_blocks", None)
    per_block = getattr(getattr(perf, "kv_cache_metrics", None), "tokens_per_block", None)
    if isinstance(reused, int) and isinstance(per_block, int):
        return min(prompt_tokens, reused * per_block)
    return 0 if reused == 0 else None
