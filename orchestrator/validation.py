"""Turn pydantic validation errors into one line a user can act on."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside an annotation such as ``PyTorchConfig | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """Walk field names in ``loc`` down from ``model``; None if it leaves the models."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        current = _submodel(current.model_fields[part].annotation)
    return current


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


# Names of the earlier design documents (001, 002) that 003, the configuration reference, renamed:
# an unknown key that is one of them says what it is called now.
RENAMED = {
    "backend": "engine",
    "precision": "dtype (float32 | float16 | bfloat16; int8/int4 are quantisation: pytorch.load_in_8bit, ...)",
    "n": "dataset.n_prompts",
    "num_prompts": "dataset.n_prompts",
    "execution": "study_execution (at the top of a study file)",
    "cycle_order": "experiment_order (sequential | interleave | shuffle | reverse | latin_square)",
    "cycles": "n_cycles",
    "structure": "experiment_order",
    "transformers": "pytorch (the engine section; engine: transformers is accepted as pytorch)",
    "decoding": "decoder",
    "warmup_prompts": "warmup.n_warmup",
}


def renamed_hint(key: str) -> str:
    """`` (003 calls it 'x')`` for a name of 001/002, else an empty string."""
    now = RENAMED.get(key)
    return f" (an earlier name: 003 calls it {now})" if now else ""


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def describe(exc: ValidationError, model: type[BaseModel], extra_candidates: Iterable[str] = ()) -> str:
    """First error of ``exc`` as one line, with a did-you-mean for unknown keys."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        parent = model_at(model, loc[:-1])
        candidates = list(parent.model_fields) if parent else []
        if not loc[:-1]:
            candidates += list(extra_candidates)
        where = f" in '{_dotted(loc[:-1])}'" if loc[:-1] else ""
        hint = renamed_hint(str(loc[-1])) or did_you_mean(str(loc[-1]), candidates)
        return f"unknown key '{loc[-1]}'{where}{hint}"
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"missing required key '{_dotted(loc)}'"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if not loc:
        return f"{message}{more}"
    return f"{_dotted(loc)}: {message} (got {err.get('input')!r}){more}"


def has_unknown_key(exc: ValidationError) -> bool:
    """True when the error is a typo-class mistake rather than an invalid value."""
    return any(e["type"] == "extra_forbidden" for e in exc.errors())
