"""The fast path of decoding: msgspec reads only the fields the model reads, straight into arrays.

A msgspec ``Struct`` generated from the pipeline's schema holds the event id and the input
fields; every other field is skipped, never built. A vector input is typed as a list of
``float | bool`` of its exact length. A nested one (the transformer's [16, 4] history) is
kept as its raw JSON text instead, which saves building a list per row: the brackets of
the whole batch are checked against the expected shape and removed, and all its numbers
are decoded as one flat list. Each input becomes one float64 array with ``np.fromiter``
(several times faster than ``np.array`` over nested lists), then float32, as the careful
path does.

The careful path (``streams.codecs.careful_decode.decode_one``, orjson) stays the reference: this one only
vouches for events that path would score, with bitwise the same id and tensors, and hands
every other event back to it, so each dead letter keeps its kind and reason. Where the two
parsers differ, the fast path gives way:

- msgspec checks the grammar of the fields it skips but not their UTF-8 nor the range of
  their numbers, where orjson rejects the whole value (``InvalidJSON``). Values that are not
  ASCII are checked as UTF-8 by Python's strict codec, and values that may hold a number
  beyond a double's range (a number with an exponent of three digits or more, or 200 digits
  in a row) go back;
- orjson reads integers beyond int64/uint64 as floats, which are not ids (``WrongType``):
  such integer ids go back;
- orjson refuses nesting deeper than 1,024; msgspec's limit is Python's recursion limit,
  which an application may raise: values that may nest that deep go back;
- a feature of exactly ``true``/``false`` is read as 1/0 by both; one beyond float32's range
  (or NaN/inf) goes back, for its ``NonFinite`` reason.

Duplicate keys agree: both keep the last occurrence (msgspec also checks the earlier ones,
and an event it refuses for that goes back too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import chain, repeat
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np

# Integers orjson returns as ints; beyond these it returns floats.
ORJSON_INT_MIN, ORJSON_INT_MAX = -(2**63), 2**64 - 1
# orjson refuses deeper nesting; a value shorter than twice this cannot nest that deep.
_MAX_DEPTH = 1024
# A number that could reach a double's maximum (~1.8e308) has an exponent of three digits or
# more, or 200 digits in a row (with a shorter exponent, fewer integer digits stay under
# 1e299). One translated copy shows both: digits and "." become "0", "E" becomes "e", and
# what may precede a number ("[", ",", ":", whitespace) becomes ",", so an exponent counts
# only in a number (hex ids such as "550e8400-..." are not numbers).
_NUMBERS = bytes.maketrans(b"0123456789.E[: \t\n\r", b"00000000000e,,,,,,")
_EXPONENT = re.compile(rb"e\+?000")
_LONG_DIGITS = b"0" * 200
# What a nested input's raw text may hold besides its brackets and commas: numbers, true,
# false and whitespace. (null, strings and objects leave "n", quotes or braces behind.)
_NUMBER_TEXT = b"0123456789.eE+- \t\n\rtruefals"
# Values checked at once: their joined text stays in the CPU's cache, and small enough for the
# allocator to reuse (a batch joined whole cost twice as much, in page faults).
_CHUNK = 64
# What msgspec raises for a value it refuses (UnicodeDecodeError is a ValueError).
MSGSPEC_REFUSED = (msgspec.DecodeError, ValueError, RecursionError)


class FastDecoder:
    """Decodes the events it can vouch for; see the module docstring."""

    def __init__(self, id_field: str, inputs: Sequence[tuple[tuple[str, ...], tuple[int, ...]]]) -> None:
        """``inputs``: where each input is (its keys, nested objects' first) and its shape. No
        path may be another's, or begin with it (``codec.fast_decoder`` leaves those to the careful path)."""
        tree: _Tree = {id_field: ("event_id", str | int)}
        self._inputs: list[tuple[attrgetter[Any], tuple[int, ...], int, bytes | None]] = []
        for k, (keys, shape) in enumerate(inputs):
            skeleton = _skeleton(shape) if len(shape) > 1 else None
            attribute = _place(tree, keys, f"input{k}", _typed(shape) if skeleton is None else msgspec.Raw)
            self._inputs.append((attrgetter(attribute), shape, math.prod(shape), skeleton))
        self._decode = msgspec.json.Decoder(_struct("Event", tree)).decode
        self._numbers = msgspec.json.Decoder(list[float | bool]).decode
        self._ids = attrgetter("event_id")

    def decode(self, values: Sequence[bytes]) -> tuple[list[int], list[Any], list[np.ndarray]]:
        """``(positions, ids, inputs)``: the positions in ``values`` of the events vouched for,
        their ids, and one float32 array per input whose row ``i`` is ``positions[i]``'s.

        Every value must be non-empty and within the schema's size limit (the careful path
        names those faults)."""
        positions = plain_positions(values)
        objects, positions = self._structs(values, positions)
        ids: list[Any] = list(map(self._ids, objects))
        if int in set(map(type, ids)):
            keep = [
                i
                for i, event_id in enumerate(ids)
                if type(event_id) is str or ORJSON_INT_MIN <= event_id <= ORJSON_INT_MAX
            ]
            if len(keep) < len(ids):
                objects, positions = [objects[i] for i in keep], [positions[i] for i in keep]
                ids = [ids[i] for i in keep]
        n = len(objects)
        arrays, good = [], np.ones(n, dtype=bool)
        for get, shape, size, skeleton in self._inputs:
            items: Any = map(get, objects)
            if skeleton is not None:
                items, refused = self._raw_numbers(list(items), size, skeleton)
                good[refused] = False
            elif shape:
                items = chain.from_iterable(items)
            with np.errstate(over="ignore"):
                flat = np.fromiter(items, dtype=np.float64, count=n * size).astype(np.float32)
            good &= np.isfinite(flat.reshape(n, size)).all(axis=1)
            arrays.append(flat.reshape(n, *shape))
        if not good.all():
            keep = np.flatnonzero(good).tolist()
            positions, ids = [positions[i] for i in keep], [ids[i] for i in keep]
            arrays = [array[good] for array in arrays]
        return positions, ids, arrays

    def _raw_numbers(self, raws: list[msgspec.Raw], size: int, skeleton: bytes) -> tuple[list[Any], list[int]]:
        """The numbers of nested arrays given as raw JSON text, row after row, and the rows that
        are not exactly numbers in the expected shape (NaNs stand in for their numbers).

        The batch is checked and decoded joined (each raw text is one JSON value, so the joined
        skeleton is the expected one only if every row's is), row by row only if that fails."""
        joined = b",".join(raws)
        if raws and joined.translate(None, _NUMBER_TEXT) == b",".join(repeat(skeleton, len(raws))):
            if not size:
                return [], []
            try:
                return self._numbers(b"[" + joined.translate(None, b"[]") + b"]"), []
            except MSGSPEC_REFUSED:
                pass
        if len(raws) == 1:
            return [math.nan] * size, [0]
        numbers: list[Any] = []
        refused = []
        for row, raw in enumerate(raws):
            row_numbers, row_refused = self._raw_numbers([raw], size, skeleton)
            numbers.extend(row_numbers)
            if row_refused:
                refused.append(row)
        return numbers, refused

    def _structs(self, values: Sequence[bytes], positions: list[int]) -> tuple[list[Any], list[int]]:
        """The decoded structs of ``values[positions]`` msgspec accepts, and their positions."""
        todo = iter([values[i] for i in positions])
        objects: list[Any] = []
        refused: list[int] = []
        while True:
            try:
                # extend keeps what was decoded before a refusal; the next pass goes on after it.
                objects.extend(map(self._decode, todo))
                break
            except MSGSPEC_REFUSED:
                refused.append(len(objects) + len(refused))
        if refused:
            skipped = set(refused)
            positions = [p for k, p in enumerate(positions) if k not in skipped]
        return objects, positions


# The fields of a struct to generate, by JSON key: a leaf's attribute name and type, or the
# fields of the nested object's own struct.
_Tree = dict[str, "tuple[str, Any] | _Tree"]


def _place(tree: _Tree, keys: tuple[str, ...], name: str, typed: Any) -> str:
    """Put a leaf at ``keys`` in ``tree``; the dotted attribute path that reads it from a struct."""
    node = tree
    attributes = []
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        assert isinstance(child, dict), "a path nested in another: codec.fast_decoder does not get here"
        attributes.append(f"n{list(node).index(key)}")
        node = child
    node[keys[-1]] = (name, typed)
    return ".".join([*attributes, name])


def _struct(name: str, tree: _Tree) -> Any:
    """A msgspec struct of ``tree``'s fields (a nested object's own struct for each subtree)."""
    fields = []
    for k, (key, node) in enumerate(tree.items()):
        attribute, typed = (f"n{k}", _struct(f"{name}_{k}", node)) if isinstance(node, dict) else node
        fields.append((attribute, typed, msgspec.field(name=key)))
    return msgspec.defstruct(name, fields, gc=False)


def overlapping(paths: Sequence[tuple[str, ...]]) -> bool:
    """Whether one of ``paths`` is another, or begins with it (one field read twice, or one nested
    in another): no struct holds both, so neither the fast path nor a pick reads them."""
    return any(a[: len(b)] == b for i, a in enumerate(paths) for j, b in enumerate(paths) if i != j)


def _typed(shape: tuple[int, ...]) -> Any:
    """The msgspec type of a scalar or vector field: a number, or a list of exactly ``shape[0]``."""
    if not shape:
        return float | bool
    return Annotated[list[float | bool], msgspec.Meta(min_length=shape[0], max_length=shape[0])]


def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of nested arrays of ``shape``: ``[[,],[,]]`` for [2, 2]."""
    inner = _skeleton(shape[1:]) if len(shape) > 1 else b""
    return b"[" + b",".join([inner] * shape[0]) + b"]"


def plain_positions(values: Sequence[bytes]) -> list[int]:
    """The positions of the values where msgspec's verdict on the skipped fields is orjson's.

    Values are checked in chunks, joined (a value is a substring of its joined chunk, so a
    chunk with no hit has no value with one), and one by one only in a chunk with a hit."""
    positions: list[int] = []
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        joined = b"\n".join(chunk)
        if joined.isascii() and not _risky_numbers(joined) and max(map(len, chunk)) <= 2 * _MAX_DEPTH:
            positions.extend(range(start, start + len(chunk)))
        else:
            positions.extend(start + i for i, value in enumerate(chunk) if _plain(value))
    return positions


def _plain(value: bytes) -> bool:
    if not value.isascii():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return not _risky_numbers(value) and not _may_nest_too_deep(value)


def _risky_numbers(text: bytes) -> bool:
    """Whether ``text`` may hold a number beyond a double's range (see ``_NUMBERS``)."""
    numbers = text.translate(_NUMBERS)
    if _LONG_DIGITS in numbers:
        return True
    for match in _EXPONENT.finditer(numbers):
        at = match.start()
        start = numbers.rfind(b",", max(0, at - 256), at)
        if start < 0 or not numbers[start + 1 : at].strip(b"0-"):  # what precedes "e" is a number's
            return True
    return False


def _may_nest_too_deep(value: bytes) -> bool:
    return len(value) > 2 * _MAX_DEPTH and value.count(b"[") + value.count(b"{") > _MAX_DEPTH
