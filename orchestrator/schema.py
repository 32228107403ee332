"""``llem schema``: JSON Schemas of experiment and study files (for editors) and of result.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from llem_agent.contract import RESULT_SCHEMA_VERSION, ExperimentConfig, ExperimentResult

from .study import StudyExecution

_SCALAR = {"type": ["string", "number", "integer", "boolean", "null"]}


def experiment_schema() -> dict[str, Any]:
    schema = ExperimentConfig.model_json_schema()
    schema["title"] = "llem experiment"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def study_schema() -> dict[str, Any]:
    """Every experiment field (none required: they may come from ``base:``) plus the study keys."""
    schema = copy.deepcopy(experiment_schema())
    schema["title"] = "llem study"
    schema.pop("required", None)
    execution = StudyExecution.model_json_schema()
    schema.setdefault("$defs", {}).update(execution.pop("$defs", {}))
    schema["$defs"]["StudyExecution"] = execution
    props = schema["properties"]
    props["engine"] = {"anyOf": [props["engine"], {"type": "array", "items": props["engine"], "minItems": 1}]}
    props["name"] = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"}
    props["base"] = {"type": "string", "description": "Experiment file whose fields are the starting point."}
    props["sweep"] = {
        "type": "object",
        "description": "Keys are (dotted) field paths: a list of scalars is an axis, a list of mappings a group.",
        "additionalProperties": {
            "type": "array",
            "minItems": 1,
            "anyOf": [
                {"items": _SCALAR},
                {"items": {"type": "object", "additionalProperties": {"anyOf": [_SCALAR, {"type": "array"}]}}},
            ],
        },
    }
    props["experiments"] = {"type": "array", "items": {"type": "object"}}
    props["study_execution"] = {"$ref": "#/$defs/StudyExecution"}
    props["runners"] = {
        "type": "object",
        "additionalProperties": {"type": "string", "pattern": "^(docker(:.+)?|local)$"},
    }
    return schema


def result_schema() -> dict[str, Any]:
    schema = ExperimentResult.model_json_schema()
    schema["title"] = f"llem result (schema_version {RESULT_SCHEMA_VERSION})"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def all_schemas() -> dict[str, dict[str, Any]]:
    """The three schemas by file name."""
    return {
        f"llem-{name}.schema.json": schema
        for name, schema in (
            ("experiment", experiment_schema()),
            ("study", study_schema()),
            ("result", result_schema()),
        )
    }


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, schema in all_schemas().items():
        path = out_dir / filename
        path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written
