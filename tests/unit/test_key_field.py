"""Reading keys from an event field (streams.codecs.key_field): the msgspec path agrees with orjson's
reference on every value, the hostile ones included, and a key's bytes are as documented."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.codecs.codec import Reject
from streams.codecs.key_field import KeyField
from streams.records import InputRecord

FIELD = KeyField("account", max_payload_bytes=10_000)


def rec(index: int, value: bytes | None) -> InputRecord:
    return InputRecord("tx", 0, index, 0, None, value)


def verdicts(values: list[bytes | None]) -> list[object]:
    records = [rec(i, v) for i, v in enumerate(values)]
    found = FIELD.keys(records)
    return [found[i] if isinstance(found[i], bytes) else found[i].error for i in range(len(records))]  # type: ignore[union-attr]


# Values msgspec would accept (it skips the other fields unchecked) and orjson refuses: the fast
# path must not vouch for them.
@pytest.mark.parametrize(
    "value",
    [
        b'{"account": "a", "x": "\xff"}',
        b'{"account": "a", "x": "\xc0\xaf"}',
        b'{"account": "a", "x": "\xed\xa0\x80"}',
        b'{"account": "a", "x": ' + b"9" * 400 + b"}",
        b'{"account": "a", "x": 1e400}',
        b'{"account": "a", "x": ' + b"[" * 1100 + b"]" * 1100 + b"}",
        b'{"account": "\\ud800"}',
    ],
)
def test_a_value_orjson_refuses_is_invalid_json_whatever_msgspec_says(value):
    assert verdicts([value]) == ["InvalidJSON"]


def test_a_key_is_a_strings_utf8_or_an_integers_digits():
    values = [b'{"account": 123}', b'{"account": "123"}', b'{"account": ""}', '{"account": "é"}'.encode()]
    assert verdicts(values) == [b"123", b"123", b"", "é".encode()]
    assert verdicts([b'{"account": 18446744073709551616}']) == ["WrongType"], "beyond uint64: orjson reads a float"


@given(st.lists(st.one_of(st.text(max_size=20), st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.floats())))
def test_the_batch_path_gives_the_reference_verdict_for_every_value(keys):
    # Integers as raw JSON text (orjson cannot write those beyond 64 bits), the rest by orjson.
    values = [b'{"account": %d}' % key if type(key) is int else orjson.dumps({"account": key}) for key in keys]
    records = [rec(i, v) for i, v in enumerate(values)]
    found = FIELD.keys(records)
    for i, record in enumerate(records):
        reference = FIELD.key_of(record)
        if isinstance(reference, Reject):
            assert isinstance(found[i], Reject) and found[i].error == reference.error  # type: ignore[union-attr]
        else:
            assert found[i] == reference
