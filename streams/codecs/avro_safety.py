"""Avro schemas that could make a small record cost unbounded memory or stack, refused before
they decode anything (``streams.codecs.schema_transcode``).

- A recursive schema (a record that holds itself, through a union or an array): a value could
  nest as deep as it has bytes, past the stack of the compiled reader (a crash, not an error).
- An array of items that encode in zero bytes (``null``, a record of nulls, an empty record, a
  fixed of size 0): its count is a varint, so six bytes could ask for billions of items.
"""

from __future__ import annotations

from typing import Any


class UnsafeSchema(ValueError):
    pass


def check_safe(parsed: Any) -> None:
    """Refuse a parsed Avro schema that could make a small record cost unbounded memory or stack."""
    _walk(parsed, {}, ())


def _walk(schema: Any, named: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Whether ``schema`` encodes in zero bytes; raises ``UnsafeSchema``."""
    if isinstance(schema, list):  # a union: its branch index takes a byte
        for branch in schema:
            _walk(branch, named, path)
        return False
    if isinstance(schema, str):
        if schema in path:
            raise UnsafeSchema(f"it is recursive ({schema} holds itself): a record could nest without bound")
        if schema in named:
            return _walk(named[schema], named, path)
        return schema == "null"
    kind = schema.get("type")
    if kind in ("record", "error"):
        name = schema.get("name", "")
        named[name] = schema
        widths = [_walk(f["type"], named, (*path, name)) for f in schema.get("fields", [])]
        return all(widths)
    if kind in ("array", "map"):
        items = schema["items"] if kind == "array" else schema["values"]
        if _walk(items, named, path) and kind == "array":
            raise UnsafeSchema("an array of items that take no bytes: a few bytes could ask for billions of them")
        return False
    if kind == "fixed":
        named[schema.get("name", "")] = schema
        return int(schema.get("size", 0)) == 0
    if kind == "enum":
        named[schema.get("name", "")] = schema
        return False
    if isinstance(kind, str | list | dict) and kind not in ("record", "error", "array", "map", "fixed", "enum"):
        return _walk(kind, named, path)
    return False
