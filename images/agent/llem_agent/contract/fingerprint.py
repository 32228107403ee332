"""A fingerprint of the wire contract, so the host can refuse an image that speaks another one.

It hashes the shape of every message the two sides exchange (the run request with its full
experiment config, the result, the error, the description of simulated GPUs): field names,
whether each is required, and their types, walked recursively. Docstrings, descriptions and
defaults do not count, and neither does the pydantic version that happens to be installed on
either side. Each image stores its
fingerprint in ``CONTRACT_FINGERPRINT_PATH`` at build time (a RUN step of its Dockerfile), so an
image built by plain ``docker compose build`` has one too.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from typing import Any

from pydantic import BaseModel

CONTRACT_FINGERPRINT_PATH = "/opt/llem/contract-fingerprint"


def _shape(tp: Any, seen: set[str]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp.__name__ in seen:
            return {"model": tp.__name__}
        seen = seen | {tp.__name__}
        fields = {
            name: [_shape(info.annotation, seen), info.is_required()] for name, info in sorted(tp.model_fields.items())
        }
        return {"model": tp.__name__, "fields": fields}
    if origin is typing.Literal:
        return ["literal", sorted(repr(a) for a in args)]
    if origin in (typing.Union, types.UnionType):
        return ["union", sorted(json.dumps(_shape(a, seen), sort_keys=True) for a in args)]
    if origin is typing.Annotated:
        return _shape(args[0], seen)
    if origin is not None:
        return [getattr(origin, "__name__", str(origin)), [_shape(a, seen) for a in args]]
    if isinstance(tp, type):
        return tp.__name__
    return str(tp)


def contract_fingerprint() -> str:
    """16 hex characters identifying the contract's shape."""
    from llem_agent.contract.result import ExperimentResult, RunError
    from llem_agent.contract.run import CONTRACT_VERSION, RunRequest
    from llem_agent.contract.simulation import SimulatedGpus

    messages = (RunRequest, ExperimentResult, RunError, SimulatedGpus)
    shape = [CONTRACT_VERSION, *(_shape(m, set()) for m in messages)]
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
