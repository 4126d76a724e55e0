"""``[pipelines.NAME.features]``: the model's inputs in ``forward`` order, and the event schema that decodes them.

    [pipelines.NAME.features]
    id_field = "id"
    inputs = [{ field = "features", shape = [32] }, { feature = "history" }]

An input is an event field with a shape, or a per-key feature declared under
``[pipelines.NAME.state.features]`` (read by ``app.config.state``). A field nested in objects
is named by its path, a list of keys: ``{ field = ["payload", "features"], shape = [32] }``
reads ``{"payload": {"features": [...]}}`` (a string is always one key, dots and all).
"""

from __future__ import annotations

import math

from app.config.table import CONTROL, Table
from streams.codecs.codec import EventSchema
from streams.errors import ConfigError
from streams.features.spec import StateSpec
from streams.flow.stateful_inputs import ModelInput, decoded_fields


def load_inputs(t: Table, state: StateSpec | None, state_key: str, max_payload: int) -> tuple[ModelInput, ...]:
    """The model's inputs, in ``forward`` order: event fields (with a shape) or declared features.

    An event field holds no more numbers than an event of ``max_payload`` bytes can: the
    smallest JSON array of n numbers, ``[0,0,...]``, is 2n + 1 bytes. (A shape of 2**31 once
    loaded, to fail when the first batch was allocated.)"""
    expected = "a list of {field = NAME, shape = [N, ...]} or {feature = NAME} tables"
    raw = t.get("inputs", list, expected)
    if not raw or not all(isinstance(item, dict) for item in raw):
        raise t.fail("inputs", raw, expected)
    inputs = []
    for i, item in enumerate(raw):
        entry = Table(t.path, f"{t.key('inputs')}[{i}]", item)
        if "feature" in item:
            inputs.append(_feature_input(entry, state, state_key))
        else:
            shape = entry.get("shape", list, "a list of positive integers, e.g. [32]")
            if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
                raise entry.fail("shape", shape, "a list of positive integers, e.g. [32]")
            most = (max_payload - 1) // 2
            if math.prod(shape) > most:
                expected = (
                    f"a list of positive integers, e.g. [32], of at most {most:,} numbers in all "
                    f"(an event of max_payload_bytes {max_payload:,} holds no more)"
                )
                raise entry.fail("shape", shape, expected)
            name, path = _field(entry)
            inputs.append(ModelInput(name, tuple(shape), path=path))
        entry.done()
    paths: dict[str, tuple[str, ...]] = {}
    for one in inputs:
        if not one.from_state and paths.setdefault(one.name, one.path) != one.path:
            raise ConfigError(
                f"{t.path}: two inputs of '{t.key('inputs')}' are named {one.name!r}, one a nested path and one a "
                "key with dots: name them apart"
            )
    if state is not None:
        shapes = {i.name: i.shape for i in inputs if not i.from_state}
        for name in state.fields:
            if paths.get(name, ()) != ():
                raise ConfigError(
                    f"{t.path}: the features under [{state_key}] read the top-level field {name!r}, and an input of "
                    f"'{t.key('inputs')}' has that name as a nested path: name them apart"
                )
            if shapes.get(name, ()) != ():
                raise ConfigError(
                    f"{t.path}: field {name!r} is a model input of shape {list(shapes[name])} in '{t.key('inputs')}' "
                    f"and a number the features under [{state_key}] read: expected one number per event"
                )
    return tuple(inputs)


# The deepest path a nested field may have.
MAX_FIELD_DEPTH = 16


def _field(entry: Table) -> tuple[str, tuple[str, ...]]:
    """An input field's name and, for one nested in objects, its path (the keys, outermost first)."""
    expected = f"a non-empty string, or a list of 1 to {MAX_FIELD_DEPTH} of them (a path into nested objects)"
    value = entry.get("field", (str, list), expected)
    if isinstance(value, str):
        return entry.text("field"), ()
    if not 0 < len(value) <= MAX_FIELD_DEPTH or not all(isinstance(k, str) and k.strip() for k in value):
        raise entry.fail("field", value, expected)
    if any(CONTROL.search(k) for k in value):
        raise entry.fail("field", value, "keys without control characters")
    keys = tuple(value)
    return ".".join(keys), (keys if len(keys) > 1 else ())


def _feature_input(entry: Table, state: StateSpec | None, state_key: str) -> ModelInput:
    name = entry.text("feature")
    if state is None:
        expected = f"a feature declared under [{state_key}.features], but there is no [{state_key}] table"
        raise entry.fail("feature", name, expected)
    try:
        feature = state.feature(name)
    except KeyError:
        declared = [f.name for f in state.features]
        expected = f"one of the features declared under [{state_key}.features]: {declared}"
        raise entry.fail("feature", name, expected) from None
    return ModelInput(name, feature.shape, from_state=True)


def load_schema(t: Table, inputs: tuple[ModelInput, ...], state: StateSpec | None, max_payload: int) -> EventSchema:
    """The event schema: ``id_field`` and the event fields to decode (model inputs and the numbers state keeps)."""
    fields = decoded_fields(inputs, state.fields if state is not None else ())
    schema = EventSchema(id_field=t.text("id_field", "id"), inputs=fields, max_payload_bytes=max_payload)
    t.done()
    return schema
