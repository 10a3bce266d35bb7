"""The ten JSON Schemas structured output is measured and tested on, and the prompt asking for each.

One list for `tandem bench --json-schemas` (bench/schema_rounds.py) and the exactness tests
(tests/grammar_reference.py): nested objects, arrays, enums, numbers, booleans, a pattern,
strings with escapes and CJK. Every object is strict (OpenAI's structured outputs).
"""

from __future__ import annotations

import json


def _strict(schema):
    """OpenAI's strict structured outputs: no property beyond the declared ones, at every level."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if schema.get("type") == "object":
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


SCHEMAS = [_strict(s) for s in [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
     "required": ["city", "country"]},
    {"type": "object", "properties": {"colors": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
     "required": ["colors"]},
    {"type": "object", "properties": {"answer": {"enum": ["yes", "no", "maybe"]}}, "required": ["answer"]},
    {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]},
    {"type": "object", "properties": {"person": {"type": "object", "properties": {
        "first": {"type": "string"}, "last": {"type": "string"}}, "required": ["first", "last"]}},
     "required": ["person"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "count": {"type": "integer", "minimum": 0}},
     "required": ["ok", "count"]},
    {"type": "object", "properties": {"quote": {"type": "string", "pattern": "^[^\\n]{0,40}$"}},
     "required": ["quote"]},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"id": {"type": "integer"}, "tag": {"enum": ["a", "b"]}},
        "required": ["id", "tag"]}}}, "required": ["items"]},
    {"type": "object", "properties": {"greeting": {"enum": ["你好", "こんにちは", "say \"hi\"\\n"]}},
     "required": ["greeting"]},
]]


def schema_instruction(schema: dict) -> str:
    """The user's message asking for one answer under `schema` (the bench wraps it in the chat template)."""
    return ("Reply with one JSON object matching this JSON Schema, nothing else:\n"
            + json.dumps(schema, ensure_ascii=False))
