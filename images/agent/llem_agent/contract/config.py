"""Experiment configuration: what one measured run is asked to do.

This is the user-facing schema of 003 ("Config Reference"), shared verbatim by the host
(which validates it before any GPU time is spent) and the agent (which executes it).
`None` in an engine section means "the engine's own default" (001): the engine resolves
it at run time and records the effective value in the result, so the config hash only
reflects what the user chose.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EngineName = Literal["pytorch", "vllm", "tensorrt"]
ENGINE_ALIASES: dict[str, str] = {"transformers": "pytorch"}
ENGINES: tuple[str, ...] = ("pytorch", "vllm", "tensorrt")

DType = Literal["float32", "float16", "bfloat16"]


def canonical_engine(name: str) -> str:
    """Map an engine name or alias (``transformers``) to its canonical name."""
    return ENGINE_ALIASES.get(name, name)


class _Strict(BaseModel):
    """Base for every config section: unknown keys fail, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    """Which prompts to use (003 ``dataset:``)."""

    source: str = Field(
        default="aienergyscore",
        description="Built-in prompt set name or path to a .jsonl file (one {'prompt': ...} per line).",
    )
    n_prompts: int = Field(default=100, ge=1, description="Number of prompts measured.")
    order: Literal["interleaved", "grouped", "shuffled"] = Field(
        default="interleaved", description="Order in which prompts are drawn."
    )


class DecoderConfig(_Strict):
    """Universal decoding settings (003 ``decoder:``)."""

    temperature: float = Field(default=1.0, ge=0.0)
    do_sample: bool = True
    top_k: int = Field(default=50, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    min_new_tokens: int | None = Field(default=None, ge=0)

    @property
    def greedy(self) -> bool:
        """True when decoding is greedy: sampling off, or temperature 0 (003)."""
        return not self.do_sample or self.temperature == 0.0


class WarmupConfig(_Strict):
    """Warmup before the measured window (003 ``warmup:``, fixed mode)."""

    enabled: bool = True
    n_warmup: int = Field(
        default=5,
        ge=0,
        description="Warmup prompts, run as full-length batches drawn like the measured ones.",
    )


class PyTorchConfig(_Strict):
    """Transformers engine settings (003 ``pytorch:``); None = the engine's default."""

    batch_size: int | None = Field(default=None, ge=1, description="Effective default: 1.")


class ExperimentConfig(_Strict):
    """One experiment: model, engine and how to measure it (003 Config Reference)."""

    model: str = Field(min_length=1, description="Hugging Face model id or local path.")
    engine: EngineName = "pytorch"
    dtype: DType | None = Field(
        default=None, description="None: bfloat16 on GPU, float32 on CPU (recorded in the result)."
    )
    random_seed: int = 42
    max_input_tokens: int | None = Field(default=256, ge=1)
    max_output_tokens: int | None = Field(default=256, ge=1)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    pytorch: PyTorchConfig | None = None

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

    @model_validator(mode="after")
    def _engine_section_matches(self) -> ExperimentConfig:
        for section in ENGINES:
            if section != self.engine and getattr(self, section, None) is not None:
                raise ValueError(
                    f"'{section}:' section given but engine is '{self.engine}'; remove it or set engine: {section}"
                )
        return self
