"""``[pipelines.NAME.features]``: the model's inputs in ``forward`` order, and the event schema that decodes them.

    [pipelines.NAME.features]
    id_field = "id"
    inputs = [{ field = "features", shape = [32] }, { feature = "history" }]

An input is an event field with a shape, or a per-key feature declared under
``[pipelines.NAME.state.features]`` (read by ``app.config.state``).
"""

from __future__ import annotations

import math

from app.config.table import Table
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
            inputs.append(ModelInput(entry.text("field"), tuple(shape)))
        entry.done()
    if state is not None:
        shapes = {i.name: i.shape for i in inputs if not i.from_state}
        for name in state.fields:
            if shapes.get(name, ()) != ():
                raise ConfigError(
                    f"{t.path}: field {name!r} is a model input of shape {list(shapes[name])} in '{t.key('inputs')}' "
                    f"and a number the features under [{state_key}] read: expected one number per event"
                )
    return tuple(inputs)


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
