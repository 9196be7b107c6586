"""Validate our responses against OpenAI's own schemas (a copy of the chat
completion definitions from OpenAI's published OpenAPI spec, kept beside this file)."""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema

_DEFAULT = Path(__file__).resolve().parent / "openai-chat-schemas.json"


def _schema_path() -> Path:
    path = Path(os.environ.get("OPENAI_SCHEMAS_FILE", _DEFAULT))
    if not path.exists():
        raise FileNotFoundError(
            f"OpenAI's schemas are expected at {path}; set OPENAI_SCHEMAS_FILE to point elsewhere"
        )
    return path


def _nullable_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 says `nullable: true`; JSON Schema says `type: [..., "null"]`."""
    if isinstance(node, dict):
        node = {key: _nullable_to_jsonschema(value) for key, value in node.items()}
        if node.pop("nullable", False):
            if "type" in node:
                types = node["type"] if isinstance(node["type"], list) else [node["type"]]
                node["type"] = [*types, "null"]
                if "enum" in node:
                    node["enum"] = [*node["enum"], None]
            else:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable_to_jsonschema(item) for item in node]
    return node


@functools.lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return _nullable_to_jsonschema(json.loads(_schema_path().read_text()))


def validate(instance: Any, name: str) -> None:
    """Raise jsonschema.ValidationError unless `instance` satisfies OpenAI's schema `name`."""
    document = copy.deepcopy(_document())
    schema = {"$defs": document["$defs"], "$ref": f"#/$defs/{name}"}
    jsonschema.validate(instance, schema)
