"""PyTorch / Transformers engine: ``model.generate`` over padded batches.

Per-token timestamps come from a streamer: ``generate`` hands it each step's new tokens
(already copied to the host, so the time is taken after the step really finished). Token
counts come from token ids: the attention mask for inputs (padding excluded) and the
generated ids up to and including the first end-of-sequence token for outputs.
"""

from __future__ import annotations

import contextlib
import platform
import time
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from llem_agent.contract import AgentEnvironment, ExperimentConfig
from llem_agent.engines import tensor_parallel
from llem_agent.engines.args import (
    PassthroughError,
    check_compile_mode,
    check_passthrough,
    pytorch_compile_kwargs,
    pytorch_generate_kwargs,
    pytorch_load_kwargs,
    route_passthrough,
)
from llem_agent.engines.base import RunDirs
from llem_agent.metrics import BEAM_SEARCH_UNTIMED, BatchObservation

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _StepClock(BaseStreamer):  # type: ignore[misc]  # torch/transformers are untyped here
    """Records the wall time at which each generation step's tokens arrived."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        now = time.perf_counter()
        if not self._prompt_seen:  # generate() first hands over the prompt itself
            self._prompt_seen = True
            return
        # One token per row each step; assisted generation (prompt lookup, batch 1) hands over
        # a (1, n) block of the tokens it accepted at once: they all arrived now.
        n = int(value.shape[-1]) if value.ndim == 2 else 1
        self.times.extend([now] * n)

    def end(self) -> None:
        pass


def _passthrough_targets() -> dict[str, frozenset[str]]:
    """``generate`` takes GenerationConfig's options, BitsAndBytesConfig its own; the rest goes
    to ``from_pretrained`` (which hands unknown names to the model and refuses what it cannot use)."""
    import inspect

    from transformers import BitsAndBytesConfig, GenerationConfig

    generation = {k for k in GenerationConfig().to_dict() if not k.startswith("_") and k != "transformers_version"}
    bnb = set(inspect.signature(BitsAndBytesConfig).parameters) - {"kwargs", "self"}
    return {"generate": frozenset(generation), "BitsAndBytesConfig": frozenset(bnb)}


def compile_modes() -> list[str]:
    """The ``torch.compile`` modes of this torch (TorchInductor's: default, reduce-overhead,
    max-autotune, max-autotune-no-cudagraphs, and what a newer torch adds: 2.13 has lite)."""
    from torch._inductor import list_mode_options

    return list(list_mode_options())


def generated_lengths(generated: torch.Tensor, eos_ids: set[int]) -> list[int]:
    """Tokens each row really generated: up to and including its first EOS, else all."""
    lengths: list[int] = []
    for row in generated.tolist():
        n = len(row)
        for i, token in enumerate(row):
            if token in eos_ids:
                n = i + 1
                break
        lengths.append(n)
    return lengths


def _distributed_config(kwargs: dict[str, Any]) -> None:
    """``tp_plan`` / ``tp_size`` as transformers 5 takes them (a ``DistributedConfig``; passing
    them to ``from_pretrained`` itself is deprecated there), or as they are in an older one."""
    if "tp_plan" not in kwargs:
        return
    try:
        from transformers.distributed import DistributedConfig
    except ImportError:  # transformers 4: from_pretrained(tp_plan=..., tp_size=...)
        return
    kwargs["distributed_config"] = DistributedConfig(tp_plan=kwargs.pop("tp_plan"), tp_size=kwargs.pop("tp_size"))


class PyTorchEngine:
    """Transformers ``AutoModelForCausalLM`` on one device (CUDA when visible, else CPU)."""

    def __init__(self) -> None:
        self._config: ExperimentConfig | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"
        self._dtype = "float32"
        self._eos: set[int] = set()
        self._gen_kwargs: dict[str, Any] = {}
        self._passthrough: dict[str, str] = {}
        self._tp = 1  # tensor-parallel ranks the model is split over (tensor_parallel.py)
        self._target = "cpu"  # where this process's inputs go: cuda:<local rank> under tensor parallelism

    def load(
        self,
        config: ExperimentConfig,
        model_source: str,
        adapter_source: str | None = None,
        dirs: RunDirs | None = None,
    ) -> None:
        check_compile_mode(config, compile_modes, torch.__version__)  # before anything loads
        self._config = config
        self._place(config)
        kwargs = pytorch_load_kwargs(config)
        # Remote code is never trusted unless the user says so (pytorch.trust_remote_code).
        hub = {"trust_remote_code": kwargs["trust_remote_code"], "revision": kwargs.get("revision")}
        tokenizer = AutoTokenizer.from_pretrained(model_source, **hub)
        tokenizer.padding_side = "left"  # decoder-only: new tokens follow the prompt directly
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        routes = route_passthrough(config.passthrough_kwargs, _passthrough_targets, fallback="from_pretrained")
        self._passthrough = {key: target for target, given in routes.items() for key in given}
        own_generate = pytorch_generate_kwargs(config) | {"pad_token_id": None, "streamer": None, "tokenizer": None}
        check_passthrough(config, routes, {"from_pretrained": kwargs | {"dtype": None}, "generate": own_generate})
        kwargs.update(routes.get("from_pretrained", {}))  # from_pretrained refuses a name the model does not take
        if routes.get("BitsAndBytesConfig"):
            if "quantization_config" not in kwargs:
                raise PassthroughError(
                    f"passthrough_kwargs {sorted(routes['BitsAndBytesConfig'])}: BitsAndBytesConfig options need "
                    "pytorch.load_in_4bit or pytorch.load_in_8bit"
                )
            kwargs["quantization_config"].update(routes["BitsAndBytesConfig"])
        if "quantization_config" in kwargs:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(**kwargs["quantization_config"])
        _distributed_config(kwargs)
        model = AutoModelForCausalLM.from_pretrained(model_source, dtype=_DTYPES[self._dtype], **kwargs)
        if not {"device_map", "quantization_config", "tp_plan"} & set(kwargs):
            model.to(self._device)  # a device map, bitsandbytes and a tp plan place the weights themselves
        if adapter_source is not None and config.lora is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_source)
            if config.lora.merge_weights:
                model = model.merge_and_unload()  # the deployed cost: adapter folded into the weights
        model.eval()
        compile_kwargs = pytorch_compile_kwargs(config)
        if compile_kwargs is not None:
            model.forward = torch.compile(model.forward, **compile_kwargs)
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        if self._device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self._model, self._tokenizer = model, tokenizer
        # Built once: the same for every batch, and never inside the measured window.
        self._gen_kwargs = (
            pytorch_generate_kwargs(config) | {"pad_token_id": tokenizer.pad_token_id} | routes.get("generate", {})
        )
        if "prompt_lookup_num_tokens" in self._gen_kwargs:
            self._gen_kwargs["tokenizer"] = tokenizer  # prompt lookup decoding matches on token ids and text

    def _place(self, config: ExperimentConfig) -> None:
        """The device, dtype and (under tensor parallelism) this rank's place in the group."""
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        self._dtype = config.dtype or ("bfloat16" if self._device == "cuda" else "float32")
        self._tp = tensor_parallel.processes(config)
        if self._tp > 1:
            if not tensor_parallel.launched():
                raise RuntimeError(
                    f"pytorch.tp_size {self._tp} runs as {self._tp} processes under torchrun, which llem-agent "
                    "starts: run the agent, not its engine alone"
                )
            tensor_parallel.init_group(self._device)
        rank_device = f"cuda:{tensor_parallel.local_rank()}"
        self._target = rank_device if self._device == "cuda" and self._tp > 1 else self._device
        torch.manual_seed(config.random_seed)
        section = config.pytorch
        if section is not None and section.allow_tf32 is not None and self._device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = section.allow_tf32
            torch.backends.cudnn.allow_tf32 = section.allow_tf32

    def batch_size(self) -> int:
        assert self._config is not None
        section = self._config.pytorch
        return section.batch_size if section and section.batch_size else 1

    def _generate_kwargs(self) -> dict[str, Any]:
        """``model.generate`` keywords besides the inputs and the streamer (set at load)."""
        return self._gen_kwargs

    def _autocast(self) -> Any:
        section = self._config.pytorch if self._config else None
        if section is None or not section.autocast_enabled:
            return contextlib.nullcontext()
        dtype = _DTYPES[section.autocast_dtype or "bfloat16"]  # torch.autocast's own default on CPU
        return torch.autocast(device_type=self._device, dtype=dtype)

    def prepare(self, prompts: list[str]) -> Any:
        assert self._config is not None
        return self._tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            truncation=self._config.max_input_tokens is not None,
            max_length=self._config.max_input_tokens,
        ).to(self._target)

    def generate(self, batch: Any) -> BatchObservation:
        enc = batch
        clock = _StepClock()
        self.synchronize()
        beams = self._gen_kwargs.get("num_beams", 1) > 1
        start = time.perf_counter()
        if self._tp > 1:
            tensor_parallel.lead(enc)  # the followers make the same call (in the window, as serving would)
        with torch.inference_mode(), self._autocast():
            out = self._model.generate(**enc, streamer=None if beams else clock, **self._gen_kwargs)
        self.synchronize()
        end = time.perf_counter()
        generated = out[:, enc["input_ids"].shape[1] :]
        lengths = generated_lengths(generated, self._eos)
        inputs = [int(n) for n in enc["attention_mask"].sum(dim=1).tolist()]
        if beams:
            # Beam search has no per-step stream (transformers refuses a streamer with beams): no
            # token's time is known, so none is reported (TTFT and inter-token latency missing,
            # said in the result); every request ended when the batch returned.
            return BatchObservation(
                input_tokens=inputs,
                output_tokens=lengths,
                token_times_s=[[] for _ in lengths],
                complete=False,
                untimed_end_s=end - start,
                untimed_reason=BEAM_SEARCH_UNTIMED,
                cached_tokens=[0] * len(lengths),
            )
        steps = [t - start for t in clock.times]
        if len(steps) != generated.shape[1]:
            raise RuntimeError(f"streamer saw {len(steps)} steps for {generated.shape[1]} generated tokens")
        return BatchObservation(
            input_tokens=inputs,
            output_tokens=lengths,
            token_times_s=[steps[:n] for n in lengths],
            cached_tokens=[0] * len(lengths),  # generate() keeps no KV cache from one call to the next
        )

    def follow(self) -> None:
        """A tensor-parallel follower (rank > 0): the generate calls rank 0 makes, until it stops."""

        def generate(inputs: dict[str, Any]) -> None:
            with torch.inference_mode(), self._autocast():
                self._model.generate(**inputs, **self._gen_kwargs)
            self.synchronize()

        tensor_parallel.follow(generate, self._target)

    def synchronize(self) -> None:
        if self._device == "cuda":
            torch.cuda.synchronize()

    def prefix_cache(self) -> bool:
        return False  # each generate() call starts from an empty KV cache

    def reset_prefix_cache(self) -> bool:
        return False

    def effective(self) -> dict[str, str | int | float | bool | None]:
        out: dict[str, str | int | float | bool | None] = {
            "device": self._device,
            "dtype": self._dtype,
            "batch_size": self.batch_size(),
        }
        if self._tp > 1:
            out["tensor_parallel_size"] = self._tp  # processes, one per GPU (torchrun)
        generation = self._model.generation_config if self._model is not None else None
        if generation is not None:
            kwargs = self._gen_kwargs
            out["num_beams"] = int(kwargs.get("num_beams") or generation.num_beams or 1)
            use_cache = kwargs.get("use_cache", generation.use_cache)
            out["use_cache"] = True if use_cache is None else bool(use_cache)
        attn = getattr(getattr(self._model, "config", None), "_attn_implementation", None)
        if attn is not None:
            out["attn_implementation"] = str(attn)
        return out

    def passthrough(self) -> dict[str, str]:
        return dict(self._passthrough)

    def n_parameters(self) -> int:
        return int(sum(p.numel() for p in self._model.parameters()))

    def peak_device_memory_mb(self) -> float | None:
        if self._device != "cuda":
            return None
        return float(torch.cuda.max_memory_allocated()) / 2**20

    def environment(self) -> AgentEnvironment:
        names = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if self._device == "cuda" else []
        )
        return AgentEnvironment(
            python=platform.python_version(),
            engine_version=transformers.__version__,
            torch_version=torch.__version__,
            transformers_version=transformers.__version__,
            device=self._device,
            device_names=names,
            cuda_runtime=torch.version.cuda,
        )
