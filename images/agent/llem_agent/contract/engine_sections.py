"""Engine sections of the experiment config: ``pytorch:``, ``vllm:``, ``tensorrt:`` (003).

Every field defaults to None, meaning "the engine's own default" (001): the engine resolves
it at run time and records the effective value. Field names follow the engines' own
argument names so that mapping them is mechanical.

Each section also carries its engine's traits (``EngineSection``): what the host and the agent
ask of an engine (the GPUs a run takes, whether its workers are processes of their own, what
must import for its agent) instead of branching on the engine's name. Traits are class
variables and methods, not fields: the schema and the contract fingerprint do not see them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

# The bounds of the schema's numbers (README "Numbers in a study file"); `llem schema` shows
# each field's minimum and maximum. Sized so that no real run is refused and no absurd value
# (10^100 tokens, an endless wait) is found out only inside a container.
MAX_TOKENS = 1 << 20  # tokens of one prompt or one output (1,048,576); also top_k and n-gram sizes
MAX_ENGINE_TOKENS = 1 << 27  # an engine's capacity in tokens: context, tokens per step, KV cache
MAX_SEQUENCES = 1 << 16  # a batch, sequences at once, outputs per prompt, group sizes (65,536)
MAX_BEAMS = 1024
MAX_DEVICES = 1024  # tensor / pipeline parallel degree, processes
MAX_SMALL_COUNT = 1024  # scheduler steps, attention splits
MAX_PENALTY = 100.0  # |length_penalty|, repetition_penalty
MAX_MEMORY_GIB = 16384.0  # host memory handed to an engine (swap, CPU offload): 16 TiB
MAX_KV_CACHE_BYTES = 1 << 50  # 1 PiB
MAX_LIST_ITEMS = 10_000  # module names and the like
MAX_NAME_CHARS = 128  # a free-form name the engine checks itself (a torch.compile mode)
_INF = float("inf")


class Section(BaseModel):
    """Base of every config section: unknown keys fail, instances are immutable.

    Strict: a boolean is never a number (``batch_size: true`` is refused, not batch size 1), a
    quoted ``"4"`` is a string, not a number, and a float is not an integer; an integer is a
    float where a float goes. Floats are finite (``.inf`` and ``.nan`` are refused).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True, allow_inf_nan=False)


def check_finite_json(value: Any, where: str) -> None:
    """ValueError unless ``value`` (free-form engine arguments) is JSON: string keys, finite numbers.

    What JSON cannot carry would not reach the agent as written: the host's experiment.json has
    null where the study said ``.nan``, and a YAML date or ``!!binary`` would arrive as a string.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not -_INF < item < _INF:  # false for NaN too
            raise ValueError(f"{item} in {where} is not a finite number (JSON has no NaN or infinity)")
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise ValueError(f"keys in {where} must be strings, got {key!r}")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif item is not None and not isinstance(item, (str, int, float)):
            raise ValueError(f"{where} holds a {type(item).__name__}, which JSON cannot carry: {item!r}")


def _gpu_key(key: str | int) -> bool:
    return (isinstance(key, int) and not isinstance(key, bool) and key >= 0) or (isinstance(key, str) and key.isdigit())


class EngineSection(Section):
    """Base of an engine's section, with the traits each engine answers for itself. A config
    without the section asks a default one (``ExperimentConfig.engine_section``)."""

    # The agent's engine class, "module:Class" (llem_agent.engines imports it on demand).
    agent: ClassVar[str] = ""
    # The engine's own packages, which must import where its agent runs (checked before the
    # agent's module by the local runner's probe).
    stack_imports: ClassVar[tuple[str, ...]] = ()
    # Its workers are processes of their own even on one GPU (vLLM's engine core, TensorRT-LLM's
    # MPI worker): they exchange through shared memory and pin host memory.
    multiprocess: ClassVar[bool] = False
    # It compiles engines worth keeping from run to run (TensorRT-LLM): the host mounts a cache.
    builds_engines: ClassVar[bool] = False
    # `make images` builds its image from images/<engine>/; the others' images are pulled.
    make_images: ClassVar[bool] = False

    @classmethod
    def import_check(cls) -> tuple[str, ...]:
        """What must import for this engine's agent: its stack, then the agent's module."""
        return (*cls.stack_imports, cls.agent.partition(":")[0])

    def devices_needed(self) -> int:
        """How many GPUs one run occupies: one, unless the section spreads the model."""
        return 1

    def processes(self) -> int:
        """How many agent processes one run starts (the PyTorch agent's tensor parallelism: one
        per GPU, under torchrun); engines with workers of their own count one (their trait)."""
        return 1

    def max_batch(self) -> int | None:
        """The most sequences the engine runs at once as configured; None: its own default."""
        return None

    def quantisation(self) -> str | None:
        """The weight quantisation method this section asks for, or None."""
        return None

    def uses_beam_search(self) -> bool:
        """Whether the section asks for beam search."""
        return False

    def prebuilt_engine(self) -> str | None:
        """The directory of a prebuilt engine to run (``engine_path``), relative to the study; None
        where the engine builds or loads its own."""
        return None


class PyTorchConfig(EngineSection):
    """Transformers engine (003 ``pytorch:``, every field of the 004 audit)."""

    agent = "llem_agent.engines.pytorch:PyTorchEngine"
    stack_imports = ("torch", "transformers")
    make_images = True

    batch_size: int | None = Field(
        default=None, ge=1, le=MAX_SEQUENCES, description="Prompts per generate call, 1-65,536. Default 1."
    )
    attn_implementation: Literal["sdpa", "flash_attention_2", "flash_attention_3", "eager"] | None = None
    torch_compile: bool | None = None
    torch_compile_mode: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="A torch.compile mode (default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs, "
        "and whatever the image's torch adds); the agent checks it against its torch before the model loads.",
    )
    torch_compile_backend: str | None = None
    load_in_4bit: bool | None = None
    load_in_8bit: bool | None = None
    bnb_4bit_compute_dtype: Literal["float16", "bfloat16", "float32"] | None = None
    bnb_4bit_quant_type: Literal["nf4", "fp4"] | None = None
    bnb_4bit_use_double_quant: bool | None = None
    use_cache: bool | None = None
    cache_implementation: Literal["static", "offloaded_static", "sliding_window"] | None = None
    num_beams: int | None = Field(default=None, ge=1, le=MAX_BEAMS)
    early_stopping: bool | None = None
    length_penalty: float | None = Field(default=None, ge=-MAX_PENALTY, le=MAX_PENALTY)
    no_repeat_ngram_size: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    prompt_lookup_num_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    device_map: str | None = None
    max_memory: dict[str | int, str] | None = Field(default=None, max_length=MAX_DEVICES + 1)
    low_cpu_mem_usage: bool | None = None
    allow_tf32: bool | None = None
    autocast_enabled: bool | None = None
    autocast_dtype: Literal["float16", "bfloat16"] | None = None
    tp_plan: str | None = None
    tp_size: int | None = Field(default=None, ge=1, le=MAX_DEVICES)
    revision: str | None = Field(default=None, description="Model revision (commit, tag) for reproducibility.")
    trust_remote_code: bool | None = Field(default=None, description="Off unless set to true.")
    num_processes: int | None = Field(default=None, ge=1, le=MAX_DEVICES)

    @field_validator("torch_compile_mode")
    @classmethod
    def _a_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or not value.isprintable()):
            raise ValueError(f"torch_compile_mode {value!r} must be a name: not blank, no control characters")
        return value

    @model_validator(mode="after")
    def _cross_rules(self) -> PyTorchConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are mutually exclusive")
        if (self.torch_compile_mode or self.torch_compile_backend) and not self.torch_compile:
            raise ValueError("torch_compile_mode / torch_compile_backend need torch_compile: true")
        bnb = [
            n
            for n in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant")
            if getattr(self, n) is not None
        ]
        if bnb and not self.load_in_4bit:
            raise ValueError(f"{', '.join(bnb)} need load_in_4bit: true")
        if self.cache_implementation is not None and self.use_cache is False:
            raise ValueError(f"cache_implementation '{self.cache_implementation}' contradicts use_cache: false")
        if self.autocast_dtype is not None and not self.autocast_enabled:
            raise ValueError("autocast_dtype needs autocast_enabled: true")
        self._check_placement()
        return self

    def _check_placement(self) -> None:
        """Tensor parallelism (tp_plan, tp_size) and a device map (device_map, max_memory) each
        decide how many GPUs a run gets, so each must say it in full."""
        if self.tp_plan is not None and self.tp_plan != "auto":
            raise ValueError(f"tp_plan {self.tp_plan!r}: transformers takes 'auto' (the model's own plan)")
        if self.tp_size is not None and self.tp_plan is None:
            raise ValueError("tp_size needs tp_plan: auto (tensor parallelism over tp_size GPUs)")
        if self.tp_plan is not None and self.tp_size is None:
            raise ValueError("tp_plan: auto needs tp_size: the GPUs (one process each) the model is split over")
        if self.tp_plan is not None and (self.device_map is not None or self.max_memory is not None):
            raise ValueError("tp_plan and device_map / max_memory both place the weights; use one of them")
        if self.max_memory is None:
            return
        if self.device_map is None:
            raise ValueError("max_memory needs device_map (e.g. auto): without one it places nothing")
        gpus = sorted(self.max_memory_gpus())
        others = [k for k in self.max_memory if not _gpu_key(k) and k not in ("cpu", "disk")]
        if others or gpus != list(range(len(gpus))):
            raise ValueError(
                f"max_memory keys {sorted(map(str, self.max_memory))}: GPUs are numbered 0..N-1 (the run's own "
                "GPUs, in order), besides cpu and disk"
            )

    def max_memory_gpus(self) -> set[int]:
        """The GPU numbers ``max_memory`` gives memory to (keys 0, 1, ... or "0", "1", ...)."""
        return {int(k) for k in (self.max_memory or {}) if _gpu_key(k)}

    def devices_needed(self) -> int:
        """tp_size under tensor parallelism; with a device map, the GPUs max_memory names; else one."""
        if self.tp_plan is not None and self.tp_size is not None:
            return self.tp_size
        if self.device_map is not None and self.max_memory_gpus():
            return len(self.max_memory_gpus())
        return 1

    def processes(self) -> int:
        return self.tp_size if self.tp_plan is not None and self.tp_size is not None else 1

    def max_batch(self) -> int | None:
        return self.batch_size

    def quantisation(self) -> str | None:
        if self.load_in_4bit or self.load_in_8bit:
            return "bnb_4bit" if self.load_in_4bit else "bnb_8bit"
        return None

    def uses_beam_search(self) -> bool:
        return (self.num_beams or 1) > 1


class VLLMAttentionConfig(Section):
    """vLLM attention backend settings (003 ``vllm.engine.attention:``)."""

    engine: str | None = Field(default=None, description="Attention backend name, e.g. FLASH_ATTN, FLASHINFER.")
    flash_attn_version: int | None = Field(default=None, ge=2, le=3)
    flash_attn_max_num_splits_for_cuda_graph: int | None = Field(default=None, ge=1, le=MAX_SMALL_COUNT)
    use_prefill_decode_attention: bool | None = None
    use_prefill_query_quantization: bool | None = None
    use_cudnn_prefill: bool | None = None
    disable_flashinfer_prefill: bool | None = None
    disable_flashinfer_q_quantization: bool | None = None
    use_trtllm_attention: bool | None = None
    use_trtllm_ragged_deepseek_prefill: bool | None = None


class VLLMSpeculativeConfig(Section):
    """vLLM speculative decoding (``speculative_config``)."""

    method: str | None = Field(default=None, description="ngram, eagle, eagle3, medusa, mtp, draft_model...")
    model: str | None = None
    num_speculative_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    prompt_lookup_max: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    prompt_lookup_min: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    draft_tensor_parallel_size: int | None = Field(default=None, ge=1, le=MAX_DEVICES)


class VLLMEngineConfig(Section):
    """Arguments of ``vllm.LLM`` / EngineArgs (003 ``vllm.engine:``)."""

    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    swap_space: float | None = Field(default=None, ge=0.0, le=MAX_MEMORY_GIB, description="GiB, 0-16,384.")
    cpu_offload_gb: float | None = Field(default=None, ge=0.0, le=MAX_MEMORY_GIB, description="GiB, 0-16,384.")
    block_size: Literal[8, 16, 32, 64, 128] | None = None
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e5m2", "fp8_e4m3"] | None = None
    enforce_eager: bool | None = None
    enable_chunked_prefill: bool | None = None
    max_num_seqs: int | None = Field(default=None, ge=1, le=MAX_SEQUENCES)
    max_num_batched_tokens: int | None = Field(default=None, ge=1, le=MAX_ENGINE_TOKENS)
    max_model_len: int | None = Field(default=None, ge=1, le=MAX_ENGINE_TOKENS)
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=MAX_DEVICES)
    pipeline_parallel_size: int | None = Field(default=None, ge=1, le=MAX_DEVICES)
    enable_prefix_caching: bool | None = None
    quantization: (
        Literal["awq", "gptq", "fp8", "awq_marlin", "gptq_marlin", "bitsandbytes", "compressed-tensors"] | None
    ) = None
    num_scheduler_steps: int | None = Field(default=None, ge=1, le=MAX_SMALL_COUNT)
    max_seq_len_to_capture: int | None = Field(default=None, ge=1, le=MAX_ENGINE_TOKENS)
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    speculative_config: VLLMSpeculativeConfig | None = None
    offload_group_size: int | None = Field(default=None, ge=0, le=MAX_SEQUENCES)
    offload_num_in_group: int | None = Field(default=None, ge=1, le=MAX_SEQUENCES)
    offload_prefetch_step: int | None = Field(default=None, ge=0, le=MAX_SEQUENCES)
    offload_params: list[str] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    disable_custom_all_reduce: bool | None = None
    kv_cache_memory_bytes: int | None = Field(default=None, ge=1, le=MAX_KV_CACHE_BYTES)
    compilation_config: dict[str, Any] | None = None
    attention: VLLMAttentionConfig | None = None

    @field_validator("compilation_config")
    @classmethod
    def _finite(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        check_finite_json(value, "compilation_config")
        return value

    @model_validator(mode="after")
    def _cross_rules(self) -> VLLMEngineConfig:
        if self.gpu_memory_utilization is not None and self.kv_cache_memory_bytes is not None:
            raise ValueError("give gpu_memory_utilization or kv_cache_memory_bytes, not both")
        return self


class VLLMSamplingConfig(Section):
    """vLLM-only sampling parameters (003 ``vllm.sampling:``)."""

    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    min_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    ignore_eos: bool | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_SEQUENCES)


class VLLMBeamSearchConfig(Section):
    """vLLM beam search (003 ``vllm.beam_search:``)."""

    beam_width: int | None = Field(default=None, ge=1, le=MAX_BEAMS)
    length_penalty: float | None = Field(default=None, ge=-MAX_PENALTY, le=MAX_PENALTY)
    early_stopping: bool | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)


class VLLMConfig(EngineSection):
    """vLLM engine (003 ``vllm:``)."""

    agent = "llem_agent.engines.vllm:VLLMEngine"
    stack_imports = ("vllm",)
    multiprocess = True

    engine: VLLMEngineConfig | None = None
    sampling: VLLMSamplingConfig | None = None
    beam_search: VLLMBeamSearchConfig | None = None

    @model_validator(mode="after")
    def _cross_rules(self) -> VLLMConfig:
        if self.beam_search is not None and self.sampling is not None and (self.sampling.n or 1) > 1:
            raise ValueError("vllm.beam_search and vllm.sampling.n > 1 are exclusive")
        return self

    def devices_needed(self) -> int:
        """Tensor x pipeline parallel size."""
        if self.engine is None:
            return 1
        return (self.engine.tensor_parallel_size or 1) * (self.engine.pipeline_parallel_size or 1)

    def max_batch(self) -> int | None:
        return self.engine.max_num_seqs if self.engine else None

    def quantisation(self) -> str | None:
        return self.engine.quantization if self.engine else None

    def uses_beam_search(self) -> bool:
        return self.beam_search is not None


QuantAlgo = Literal[
    "FP8",
    "FP8_BLOCK_SCALES",
    "FP8_PER_CHANNEL_PER_TOKEN",
    "NVFP4",
    "INT8",
    "W8A16",
    "W4A16",
    "W4A16_AWQ",
    "W4A8_AWQ",
    "W4A16_GPTQ",
    "W8A16_GPTQ",
    "W8A8_SQ_PER_CHANNEL",
    "MIXED_PRECISION",
]


class TensorRTQuantConfig(Section):
    """TensorRT-LLM ``QuantConfig`` (003 ``tensorrt.quant``; ``quant_config`` is accepted too)."""

    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: Literal["FP8", "INT8", "NVFP4"] | None = None
    group_size: int | None = Field(default=None, ge=1, le=MAX_SEQUENCES)
    exclude_modules: list[str] | None = Field(default=None, max_length=MAX_LIST_ITEMS)


class TensorRTKvCacheConfig(Section):
    """TensorRT-LLM ``KvCacheConfig``."""

    free_gpu_memory_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    enable_block_reuse: bool | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_ENGINE_TOKENS)
    dtype: Literal["auto", "fp8", "nvfp4"] | None = None


class TensorRTSchedulerConfig(Section):
    """TensorRT-LLM ``SchedulerConfig``."""

    capacity_scheduler_policy: Literal["MAX_UTILIZATION", "GUARANTEED_NO_EVICT", "STATIC_BATCH"] | None = None
    context_chunking_policy: Literal["FIRST_COME_FIRST_SERVED", "EQUAL_PROGRESS"] | None = None


class TensorRTSamplingConfig(Section):
    """TensorRT-LLM ``SamplingParams`` beyond the universal decoder settings."""

    min_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    ignore_eos: bool | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_SEQUENCES)


class TensorRTConfig(EngineSection):
    """TensorRT-LLM engine (003 ``tensorrt:``)."""

    agent = "llem_agent.engines.tensorrt:TensorRTEngine"
    stack_imports = ("tensorrt_llm",)
    multiprocess = True
    builds_engines = True

    max_batch_size: int | None = Field(default=None, ge=1, le=MAX_SEQUENCES)
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=MAX_DEVICES)
    pipeline_parallel_size: int | None = Field(default=None, ge=1, le=MAX_DEVICES)
    max_input_len: int | None = Field(default=None, ge=1, le=MAX_ENGINE_TOKENS)
    max_seq_len: int | None = Field(default=None, ge=1, le=MAX_ENGINE_TOKENS)
    max_num_tokens: int | None = Field(default=None, ge=1, le=MAX_ENGINE_TOKENS)
    dtype: Literal["float16", "bfloat16"] | None = None
    fast_build: bool | None = None
    engine: Literal["pytorch", "tensorrt"] | None = Field(
        default=None, description="TensorRT-LLM backend: the PyTorch flow or a compiled TensorRT engine."
    )
    engine_path: str | None = Field(default=None, description="Prebuilt engine directory; skips the build.")
    quant: TensorRTQuantConfig | None = Field(default=None, validation_alias=AliasChoices("quant", "quant_config"))
    kv_cache: TensorRTKvCacheConfig | None = None
    scheduler: TensorRTSchedulerConfig | None = None
    sampling: TensorRTSamplingConfig | None = None

    @model_validator(mode="after")
    def _cross_rules(self) -> TensorRTConfig:
        if self.max_input_len is not None and self.max_seq_len is not None and self.max_input_len > self.max_seq_len:
            raise ValueError(f"max_input_len ({self.max_input_len}) exceeds max_seq_len ({self.max_seq_len})")
        # What TensorRT-LLM 1.2 itself refuses, said before any GPU time: the PyTorch flow's
        # arguments forbid the compiled-engine keys, and the compiled flow asserts KV dtype auto.
        if self.engine_path is not None and self.engine == "pytorch":
            raise ValueError("engine_path is a prebuilt TensorRT engine; it needs engine: tensorrt (or no engine)")
        compiled = self.engine == "tensorrt" or self.engine_path is not None
        if not compiled:
            if self.fast_build is not None:
                raise ValueError("fast_build applies to a compiled engine only (engine: tensorrt)")
            if self.quant is not None:
                raise ValueError(
                    "quant applies to a compiled engine only (engine: tensorrt); the PyTorch flow takes "
                    "quantisation from the checkpoint (use a pre-quantised model)"
                )
        elif self.kv_cache is not None and self.kv_cache.dtype not in (None, "auto"):
            raise ValueError(
                f"kv_cache.dtype {self.kv_cache.dtype} is not supported by a compiled engine (engine: tensorrt); "
                "set quant.kv_cache_quant_algo instead"
            )
        if self.engine_path is not None and (self.fast_build is not None or self.quant is not None):
            raise ValueError("fast_build and quant shape a build; a prebuilt engine (engine_path) was built already")
        return self

    def devices_needed(self) -> int:
        """Tensor x pipeline parallel size."""
        return (self.tensor_parallel_size or 1) * (self.pipeline_parallel_size or 1)

    def max_batch(self) -> int | None:
        return self.max_batch_size

    def quantisation(self) -> str | None:
        return self.quant.quant_algo if self.quant else None

    def prebuilt_engine(self) -> str | None:
        return self.engine_path
