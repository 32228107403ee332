"""vLLM engine through the offline ``vllm.LLM`` API.

Arguments come from the pure functions of :mod:`llem_agent.engines.args`. vLLM schedules its
own continuous batching; llem hands it ``batch_size()`` prompts per call (``max_num_seqs``,
vLLM's default 256, unless set). Per-request times come from the engine's request metrics
(``disable_log_stats=False``): time to first token and the last token's time. vLLM does not
expose the time of every token, so inter-token latency is each request's mean gap
(``latency.inter_token_source: request_means``), and that is said in every result.
"""

from __future__ import annotations

import inspect
import json
import platform
import time
from pathlib import Path
from typing import Any

from llem_agent.contract import AgentEnvironment, ExperimentConfig
from llem_agent.engines.args import (
    PassthroughError,
    check_passthrough,
    route_passthrough,
    vllm_beam_search_kwargs,
    vllm_cpu_kv_cache_bytes,
    vllm_engine_kwargs,
    vllm_lora_request,
    vllm_sampling_kwargs,
)
from llem_agent.engines.base import RunDirs
from llem_agent.metrics import BEAM_SEARCH_UNTIMED, BatchObservation
from llem_agent.modelfiles import count_parameters, local_model_dir

DEFAULT_MAX_NUM_SEQS = 256


class VLLMEngine:
    def __init__(self) -> None:
        self._config: ExperimentConfig | None = None
        self._llm: Any = None
        self._sampling: Any = None
        self._beam: Any = None
        self._lora: Any = None
        self._tokenizer: Any = None
        self._source = ""
        self._kwargs: dict[str, Any] = {}
        self._kv_sized = False
        self._passthrough: dict[str, str] = {}

    def load(
        self,
        config: ExperimentConfig,
        model_source: str,
        adapter_source: str | None = None,
        dirs: RunDirs | None = None,
    ) -> None:
        from vllm import LLM, SamplingParams

        self._config, self._source = config, model_source
        self._kwargs = vllm_engine_kwargs(config, model_source)
        routes = route_passthrough(config.passthrough_kwargs, _passthrough_targets, fallback=None)
        self._passthrough = {key: target for target, given in routes.items() for key in given}
        check_passthrough(config, routes, {"LLM": self._kwargs, "SamplingParams": vllm_sampling_kwargs(config)})
        self._kwargs.update(routes.get("LLM", {}))
        if _device() == "cpu":  # the CPU backend reserves memory by share of the node: size it from the study
            directory = local_model_dir(model_source)
            shape = _model_config(directory) if directory else None
            sized = vllm_cpu_kv_cache_bytes(config, shape) if shape else None
            if sized is not None:
                self._kwargs["kv_cache_memory_bytes"] = sized
                self._kv_sized = True
        self._llm = LLM(**self._kwargs)
        self._sampling = SamplingParams(**(vllm_sampling_kwargs(config) | routes.get("SamplingParams", {})))
        beam = vllm_beam_search_kwargs(config)
        if beam is not None and routes.get("SamplingParams"):
            raise PassthroughError(
                f"passthrough_kwargs {sorted(routes['SamplingParams'])}: SamplingParams options do not apply to "
                "vllm.beam_search"
            )
        if beam is not None:
            from vllm.sampling_params import BeamSearchParams

            self._beam = BeamSearchParams(**beam)
        lora = vllm_lora_request(config, adapter_source) if adapter_source else None
        if lora is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest(**lora)
        self._tokenizer = self._llm.get_tokenizer()

    def batch_size(self) -> int:
        assert self._config is not None
        engine = self._config.vllm.engine if self._config.vllm else None
        return engine.max_num_seqs if engine and engine.max_num_seqs else DEFAULT_MAX_NUM_SEQS

    def prepare(self, prompts: list[str]) -> list[dict[str, list[int]]]:
        assert self._config is not None
        limit = self._config.max_input_tokens
        encoded = self._tokenizer(prompts)["input_ids"]
        return [{"prompt_token_ids": list(ids[:limit] if limit else ids)} for ids in encoded]

    def generate(self, batch: Any) -> BatchObservation:
        start_wall, start = time.time(), time.perf_counter()
        if self._beam is not None:
            outputs = self._llm.beam_search(batch, self._beam, lora_request=self._lora)
            end = time.perf_counter() - start
            outs = [
                len(o.sequences[0].tokens) - len(p["prompt_token_ids"]) for o, p in zip(outputs, batch, strict=True)
            ]
            return BatchObservation(  # beam search reports no token times: none is made up
                input_tokens=[len(p["prompt_token_ids"]) for p in batch],
                output_tokens=outs,
                token_times_s=[[] for _ in outs],
                complete=False,
                untimed_end_s=end,
                untimed_reason=BEAM_SEARCH_UNTIMED,
                static=False,
            )
        outputs = self._llm.generate(batch, self._sampling, lora_request=self._lora, use_tqdm=False)
        end = time.perf_counter() - start
        inputs, outs, times = [], [], []
        cached: list[int | None] = []
        for out in outputs:
            n = sum(len(c.token_ids) for c in out.outputs)
            m = out.metrics
            if m is not None and m.first_token_latency > 0 and m.last_token_ts >= m.first_token_ts:
                first = (m.arrival_time - start_wall) + m.first_token_latency
                last = first + (m.last_token_ts - m.first_token_ts)
                times.append([first, last][: min(n, 2)])
            else:  # no metrics: TTFT unknown (never the batch time); it ended by the call's return
                times.append([])
            inputs.append(len(out.prompt_token_ids))
            outs.append(n)
            hits = getattr(out, "num_cached_tokens", None)  # prompt tokens served by the prefix cache
            cached.append(int(hits) if isinstance(hits, int) else None)
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
        """``LLM.generate`` returns once every request has finished on the device."""

    def prefix_cache(self) -> bool | None:
        config = self._llm.llm_engine.vllm_config if self._llm is not None else None
        return None if config is None else bool(config.cache_config.enable_prefix_caching)

    def reset_prefix_cache(self) -> bool:
        """``LLM.reset_prefix_cache()``: False when vLLM refuses (blocks still in use)."""
        return bool(self._llm.reset_prefix_cache())

    def effective(self) -> dict[str, str | int | float | bool | None]:
        config = self._llm.llm_engine.vllm_config if self._llm is not None else None
        out: dict[str, str | int | float | bool | None] = {"device": _device(), "batch_size": self.batch_size()}
        if self._beam is not None:
            out["beam_width"] = int(self._beam.beam_width)
        if config is not None:
            out["dtype"] = str(config.model_config.dtype).removeprefix("torch.")
            out["max_model_len"] = int(config.model_config.max_model_len)
            out["gpu_memory_utilization"] = float(config.cache_config.gpu_memory_utilization)
            out["tensor_parallel_size"] = int(config.parallel_config.tensor_parallel_size)
            out["enable_prefix_caching"] = bool(config.cache_config.enable_prefix_caching)
            out["kv_cache_dtype"] = str(config.cache_config.cache_dtype)
            kv_bytes = getattr(config.cache_config, "kv_cache_memory_bytes", None)
            if kv_bytes is not None:
                out["kv_cache_memory_bytes"] = int(kv_bytes)
                out["kv_cache_sized_by"] = "llem" if self._kv_sized else "study"
        return out

    def passthrough(self) -> dict[str, str]:
        return dict(self._passthrough)

    def n_parameters(self) -> int | None:
        directory = local_model_dir(self._source)
        return count_parameters(directory) if directory else None

    def peak_device_memory_mb(self) -> float | None:
        return None  # the weights live in vLLM's worker processes; NVML telemetry has device memory

    def environment(self) -> AgentEnvironment:
        import torch
        import transformers
        import vllm

        device = _device()
        return AgentEnvironment(
            python=platform.python_version(),
            engine_version=vllm.__version__,
            torch_version=torch.__version__,
            transformers_version=transformers.__version__,
            device=device,
            device_names=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if device == "cuda"
            else [],
            cuda_runtime=torch.version.cuda,
        )


def _passthrough_targets() -> dict[str, frozenset[str]]:
    """``SamplingParams`` takes its own fields, ``LLM()`` the EngineArgs fields (vLLM's own lists)."""
    import dataclasses

    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs

    fields = getattr(SamplingParams, "__struct_fields__", None)
    sampling = set(fields) if fields else set(inspect.signature(SamplingParams).parameters)
    engine = {f.name for f in dataclasses.fields(EngineArgs)}
    return {"SamplingParams": frozenset(sampling), "LLM": frozenset(engine)}


def _model_config(directory: Path) -> dict[str, Any] | None:
    """A local model's config.json, or None where it cannot be read."""
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _device() -> str:
    """What vLLM runs on here: ``cuda`` for the official build, ``cpu`` for a CPU build."""
    from vllm.platforms import current_platform

    return str(current_platform.device_type or "cuda")
