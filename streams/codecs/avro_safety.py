"""How much a record of an Avro schema can cost to decode, known before it decodes anything
(``streams.codecs.schema_transcode``).

Refused outright (``UnsafeSchema``):
- a recursive schema (a record that holds itself, through a union, an array or a map): a value
  could nest as deep as it has bytes, past the stack of the compiled reader (a crash, not an error);
- an array of items that encode in zero bytes (``null``, a record of nulls, an empty record, a
  fixed of size 0): its count is a varint, so six bytes could ask for billions of items;
- a schema whose smallest record already decodes to more than ``MAX_FIXED_JSON`` bytes (named
  types reused in a tree: twenty levels of two fields each are a million nulls in zero bytes).

Otherwise ``AvroBounds`` says how many JSON bytes each wire byte can become at most (``ratio``)
and what the smallest record decodes to (``fixed``): a value of ``n`` bytes decodes to at most
``fixed + ratio * n`` bytes of JSON, which the transcoder checks against the pipeline's payload
limit before reading it. Every named type is measured once, so the check is linear in the schema.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# JSON bytes one wire byte of a primitive can become at most: a string's byte escaped as \\u00XX.
PRIMITIVE_RATIO = 6
# JSON of a number or boolean read from its smallest encoding (a 1-byte varint: "-64" .. "63").
SMALL_JSON = {"null": 4, "boolean": 5, "int": 3, "long": 3, "float": 24, "double": 24, "string": 2, "bytes": 2}
MIN_WIRE = {"null": 0, "boolean": 1, "int": 1, "long": 1, "float": 4, "double": 8, "string": 1, "bytes": 1}
MAX_FIXED_JSON = 1 << 20


class UnsafeSchema(ValueError):
    pass


class AvroBounds(NamedTuple):
    ratio: float  # JSON bytes per wire byte, at most
    fixed: int  # JSON bytes of the smallest record

    def most_json(self, wire_bytes: int) -> float:
        return self.fixed + self.ratio * wire_bytes


class _Size(NamedTuple):
    wire: int  # the fewest bytes a value takes
    json: int  # the JSON bytes of that smallest value


def bounds_of(parsed: Any) -> AvroBounds:
    """The bounds of a schema parsed by fastavro, or ``UnsafeSchema`` saying why it is refused."""
    walker = _Walker()
    top = walker.size(parsed, ())
    if top.json > MAX_FIXED_JSON:
        raise UnsafeSchema(f"its smallest record decodes to {top.json:,} bytes of JSON (named types reused in a tree?)")
    return AvroBounds(max(PRIMITIVE_RATIO, walker.ratio), top.json)


def check_safe(parsed: Any) -> None:
    bounds_of(parsed)


class _Walker:
    def __init__(self) -> None:
        self.named: dict[str, Any] = {}
        self.measured: dict[str, _Size] = {}
        self.ratio = float(PRIMITIVE_RATIO)

    def size(self, schema: Any, path: tuple[str, ...]) -> _Size:
        if isinstance(schema, list):  # a union: an index byte, then the cheapest branch
            branches = [self.size(branch, path) for branch in schema]
            return _Size(1 + min((b.wire for b in branches), default=0), max((b.json for b in branches), default=4))
        if isinstance(schema, str):
            return self._named(schema, path)
        kind = schema.get("type")
        if kind in ("record", "error"):
            name = schema.get("name", "")
            self.named[name] = schema
            if name in path:
                raise UnsafeSchema(f"it is recursive ({name} holds itself): a record could nest without bound")
            fields = [(f["name"], self.size(f["type"], (*path, name))) for f in schema.get("fields", [])]
            size = _Size(sum(s.wire for _, s in fields), 2 + sum(len(n) + 4 + s.json for n, s in fields))
            self.measured[name] = size
            return size
        if kind in ("array", "map"):
            item = self.size(schema["items"] if kind == "array" else schema["values"], path)
            if kind == "map":
                item = _Size(item.wire + 1, item.json + 4)  # a key: at least its length byte, and "":
            if item.wire == 0:
                raise UnsafeSchema(f"an {kind} of items that take no bytes: a few bytes could ask for billions of them")
            self.ratio = max(self.ratio, (item.json + 1) / item.wire)
            return _Size(1, 2)  # an empty one: its zero count
        if kind == "fixed":
            name = schema.get("name", "")
            self.named[name] = schema
            width = int(schema.get("size", 0))
            self.measured[name] = _Size(width, 2 + PRIMITIVE_RATIO * width)
            return self.measured[name]
        if kind == "enum":
            name = schema.get("name", "")
            self.named[name] = schema
            longest = max((len(s) for s in schema.get("symbols", [])), default=0)
            self.measured[name] = _Size(1, 2 + longest)
            return self.measured[name]
        return self.size(kind, path)  # {"type": "int", "logicalType": ...} and the like

    def _named(self, name: str, path: tuple[str, ...]) -> _Size:
        if name in path:
            raise UnsafeSchema(f"it is recursive ({name} holds itself): a record could nest without bound")
        if name in self.measured:
            return self.measured[name]
        if name in self.named:
            return self.size(self.named[name], path)
        return _Size(MIN_WIRE.get(name, 1), SMALL_JSON.get(name, 24))
