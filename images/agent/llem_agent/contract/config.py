"""Experiment configuration: what one measured run is asked to do.

This is the user-facing schema of 003 ("Config Reference"), shared verbatim by the host
(which validates it before any GPU time is spent) and the agent (which executes it).
`None` in an engine section means "the engine's own default" (001): the engine resolves
it at run time and records the effective value in the result, so the config hash only
reflects what the user chose.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llem_agent.contract.engine_sections import (
    MAX_PENALTY,
    MAX_TOKENS,
    EngineSection,
    PyTorchConfig,
    Section,
    TensorRTConfig,
    VLLMConfig,
    check_finite_json,
)
from llem_agent.contract.support import DECODING_SUPPORT, DTYPE_SUPPORT, LORA_SUPPORT, QUANTISATION_SUPPORT

EngineName = Literal["pytorch", "vllm", "tensorrt"]
DEFAULT_ENGINE: EngineName = "pytorch"
ENGINE_ALIASES: dict[str, str] = {"transformers": "pytorch"}

DType = Literal["float32", "float16", "bfloat16"]
# Each engine's section, whose traits the host and the agent ask instead of the engine's name.
ENGINE_SECTIONS: dict[str, type[EngineSection]] = {
    "pytorch": PyTorchConfig,
    "vllm": VLLMConfig,
    "tensorrt": TensorRTConfig,
}
ENGINES: tuple[str, ...] = tuple(ENGINE_SECTIONS)

# llem's decoder presets; explicit decoder fields override the preset's values.
DECODER_PRESETS: dict[str, dict[str, Any]] = {
    "deterministic": {"do_sample": False, "temperature": 0.0},
    "standard": {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50},
    "creative": {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 0},
}


def canonical_engine(name: str) -> str:
    """Map an engine name or alias (``transformers``) to its canonical name."""
    return ENGINE_ALIASES.get(name, name)


# Prompt sets known by name (the rest of dataset.source is a .jsonl path), the keys a JSONL
# record may hold its prompt under, and the longest line either side accepts: the host checks a
# prompt file against these before any container starts, the agent reads it with them.
BUILTIN_PROMPT_SETS = {"builtin": "builtin_prompts.jsonl"}
HUB_PROMPT_SETS = {"aienergyscore": "AIEnergyScore/text_generation"}
PROMPT_TEXT_KEYS = ("prompt", "text", "question", "input")
MAX_PROMPT_LINE_BYTES = 1 << 20  # 1 MiB of text is ~250k tokens; truncated to max_input_tokens anyway
# The largest study, user config or experiment file either side reads (a regular file only;
# read at most this + 1 bytes): a 100,000-experiment study is a few hundred KiB.
MAX_CONFIG_FILE_BYTES = 16 << 20
MAX_PROMPTS = 1_000_000  # prompts measured, warm-up prompts
MAX_SEED = 2**32 - 1  # vLLM and transformers seed numpy with it, which takes 0 to 2^32 - 1
MAX_TEMPERATURE = 100.0
MAX_CACHE_TTL_SECONDS = 365 * 86400.0
MAX_INTERVAL_RUNS = 1_000_000


def prompt_text(record: object) -> str | None:
    """The prompt of one decoded JSONL record: a string, or an object's first text key; None if neither."""
    if isinstance(record, str):
        return record or None
    if isinstance(record, dict):
        return next((record[k] for k in PROMPT_TEXT_KEYS if isinstance(record.get(k), str) and record[k]), None)
    return None


class DatasetConfig(Section):
    """Which prompts to use (003 ``dataset:``)."""

    source: str = Field(
        default="aienergyscore",
        description="Built-in prompt set name or path to a .jsonl file (one {'prompt': ...} per line).",
    )
    n_prompts: int = Field(default=100, ge=1, le=MAX_PROMPTS, description="Number of prompts measured, 1-1,000,000.")
    order: Literal["interleaved", "grouped", "shuffled"] = Field(
        default="interleaved", description="interleaved: source order; grouped: by length; shuffled: seeded."
    )


class DecoderConfig(Section):
    """Universal decoding settings (003 ``decoder:``)."""

    temperature: float = Field(default=1.0, ge=0.0, le=MAX_TEMPERATURE)
    do_sample: bool = True
    top_k: int = Field(default=50, ge=0, le=MAX_TOKENS, description="0: off.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=MAX_PENALTY)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    min_new_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    preset: Literal["deterministic", "standard", "creative"] | None = Field(
        default=None, description="Fills the fields it defines; fields given explicitly win."
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in DECODER_PRESETS:
            return {**DECODER_PRESETS[data["preset"]], **data}
        return data

    @property
    def greedy(self) -> bool:
        """True when decoding is greedy: sampling off, or temperature 0 (003)."""
        return not self.do_sample or self.temperature == 0.0


class WarmupConfig(Section):
    """Warmup before the measured window (003 ``warmup:``): fixed count or CV convergence."""

    enabled: bool = True
    n_warmup: int = Field(
        default=5,
        ge=0,
        le=MAX_PROMPTS,
        description="Warmup prompts, as full-length batches drawn like the measured ones.",
    )
    thermal_floor_seconds: float = Field(
        default=60.0, ge=30.0, le=600.0, description="Wait after warmup, 30-600 s (003: minimum 30 s)."
    )
    prefix_cache: Literal["cold", "warm"] | None = Field(
        default=None,
        description="None or cold: warm up on prompts disjoint from the measured ones and empty the engine's "
        "prefix cache after warm-up, so no measured prefill is served from it; warm: warm up on the measured "
        "prompts and keep the cache (measures serving repeated prompts; labelled prefix_cache_warm).",
    )
    convergence_detection: bool = False
    cv_threshold: float = Field(default=0.05, gt=0.0, lt=1.0)
    max_prompts: int = Field(default=20, ge=1, le=MAX_PROMPTS)
    window_size: int = Field(default=3, ge=2, le=MAX_PROMPTS)
    min_prompts: int = Field(default=5, ge=1, le=MAX_PROMPTS)

    @model_validator(mode="after")
    def _cv_bounds(self) -> WarmupConfig:
        if self.convergence_detection and self.min_prompts > self.max_prompts:
            raise ValueError(f"min_prompts ({self.min_prompts}) exceeds max_prompts ({self.max_prompts})")
        return self


class BaselineConfig(Section):
    """Idle power baseline (003 ``baseline:``)."""

    enabled: bool = True
    duration_seconds: float = Field(default=30.0, ge=5.0, le=120.0)
    strategy: Literal["validated", "cached", "fresh"] = "validated"
    cache_ttl_seconds: float = Field(default=7200.0, ge=60.0, le=MAX_CACHE_TTL_SECONDS, description="At most a year.")
    validation_interval: int = Field(default=5, ge=1, le=MAX_INTERVAL_RUNS)
    drift_threshold: float = Field(default=0.10, ge=0.01, le=0.50)


class LoRAConfig(Section):
    """A LoRA adapter on top of the base model (001)."""

    adapter_id: str | None = Field(default=None, description="Hugging Face Hub id of the adapter.")
    adapter_path: str | None = Field(default=None, description="Local adapter directory.")
    merge_weights: bool = Field(default=False, description="true: merged (deployed cost); false: adapter overhead.")

    @model_validator(mode="after")
    def _one_source(self) -> LoRAConfig:
        if (self.adapter_id is None) == (self.adapter_path is None):
            raise ValueError("lora needs exactly one of adapter_id and adapter_path")
        return self


class ExperimentConfig(Section):
    """One experiment: model, engine and how to measure it (003 Config Reference)."""

    model: str = Field(min_length=1, description="Hugging Face model id or local path.")
    engine: EngineName = DEFAULT_ENGINE
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    dtype: DType | None = Field(default=None, description="None: bfloat16 on GPU, float32 on CPU (recorded).")
    random_seed: int = Field(default=42, ge=0, le=MAX_SEED, description="0 to 2^32 - 1.")
    max_input_tokens: int | None = Field(default=256, ge=1, le=MAX_TOKENS, description="1-1,048,576.")
    max_output_tokens: int | None = Field(default=256, ge=1, le=MAX_TOKENS, description="1-1,048,576.")
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    energy_sampler: Literal["auto", "nvml", "zeus", "codecarbon"] | None = Field(
        default="auto", description="null disables energy measurement (throughput-only)."
    )
    gpu_telemetry: bool = True
    cold_start: bool = Field(
        default=False,
        description="true: also measure the cold start, this run's fresh process loading the model and serving "
        "its first request, as a window of its own before warm-up (result.json cold_start).",
    )
    pytorch: PyTorchConfig | None = None
    vllm: VLLMConfig | None = None
    tensorrt: TensorRTConfig | None = None
    lora: LoRAConfig | None = None
    passthrough_kwargs: dict[str, Any] | None = Field(
        default=None, description="Extra keyword arguments handed to the engine as they are."
    )
    output_dir: str | None = None

    @field_validator("passthrough_kwargs")
    @classmethod
    def _finite(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        check_finite_json(value, "passthrough_kwargs")
        return value

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_alias(cls, value: Any) -> Any:
        return canonical_engine(value) if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _section_alias(cls, data: Any) -> Any:
        # `transformers:` is the 003 name of the pytorch section.
        if isinstance(data, dict) and "transformers" in data:
            if "pytorch" in data:
                raise ValueError("give either 'pytorch:' or 'transformers:', not both")
            data = {("pytorch" if k == "transformers" else k): v for k, v in data.items()}
        return data

    def engine_section(self) -> EngineSection:
        """The engine's own section, or its defaults where the config has none: what the traits
        of this config's engine are asked of (only the engine's section may be given)."""
        section: EngineSection | None = getattr(self, self.engine)
        return section if section is not None else ENGINE_SECTIONS[self.engine]()

    def quantisation(self) -> str | None:
        """The weight quantisation method this config asks for, or None."""
        return self.engine_section().quantisation()

    def decoding_mode(self) -> str:
        """greedy, sampling or beam: what the engine will do with this config."""
        if self.engine_section().uses_beam_search():
            return "beam"
        return "greedy" if self.decoder.greedy else "sampling"

    @model_validator(mode="after")
    def _cross_rules(self) -> ExperimentConfig:
        for section in ENGINES:
            if section != self.engine and getattr(self, section) is not None:
                raise ValueError(
                    f"'{section}:' section given but engine is '{self.engine}'; remove it or set engine: {section}"
                )
        if self.dtype is not None and self.dtype not in DTYPE_SUPPORT[self.engine]:
            raise ValueError(
                f"{self.engine} does not support dtype '{self.dtype}' (supported: {sorted(DTYPE_SUPPORT[self.engine])})"
            )
        quant = self.quantisation()
        if quant is not None and quant not in QUANTISATION_SUPPORT[self.engine]:
            raise ValueError(f"{self.engine} does not support quantisation '{quant}'")
        mode = self.decoding_mode()
        if mode not in DECODING_SUPPORT[self.engine]:
            raise ValueError(f"{self.engine} does not support {mode} decoding")
        if mode == "beam" and self.pytorch is not None and not self.decoder.greedy:
            raise ValueError("pytorch.num_beams > 1 needs greedy decoding (decoder.do_sample: false)")
        if self.pytorch is not None and self.pytorch.prompt_lookup_num_tokens and (self.pytorch.batch_size or 1) > 1:
            raise ValueError("pytorch.prompt_lookup_num_tokens needs pytorch.batch_size: 1 (assisted generation)")
        if self.lora is not None and self.engine not in LORA_SUPPORT:
            raise ValueError(f"lora is not supported on {self.engine}: merge the adapter into the model first")
        trt_dtype = self.tensorrt.dtype if self.tensorrt else None
        if trt_dtype is not None and self.dtype is not None and trt_dtype != self.dtype:
            raise ValueError(f"tensorrt.dtype '{trt_dtype}' contradicts dtype '{self.dtype}'")
        if self.passthrough_kwargs:
            real = set(ExperimentConfig.model_fields) | set(ENGINE_SECTIONS[self.engine].model_fields)
            shadowed = sorted(set(self.passthrough_kwargs) & real)
            if shadowed:
                raise ValueError(f"passthrough_kwargs must not shadow real fields: {shadowed}; set them directly")
        return self
