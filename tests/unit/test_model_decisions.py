"""The decision record (app.model_decisions): what it reads back, what it refuses, and which
earlier decisions a new one keeps in effect."""

from __future__ import annotations

import orjson
import pytest

from app.model_decisions import (
    MAX_DECIDED_AT,
    MAX_EARLIER,
    MAX_RECORD_BYTES,
    Decision,
    InvalidDecision,
    parse_decision,
)


def decision(action="promote", role="canary", **rest) -> Decision:
    fields = {"model": "fraud-mlp", "version": "c2", "decided_at": 1_700_000_000_000, "by": "sluice-p@w1 on host"}
    return Decision("p", action, role, **{**fields, **rest})


SWAP = {"demo": "fraud-mlp", "version": "7"}


@pytest.mark.parametrize(
    "made",
    [
        decision(),
        decision(role="shadow", shadow="candidate", reason="better AUC on last week"),
        decision("rollback", reason="failed 3 of 3 batches"),
        decision("swap", "champion", request=SWAP, version="7"),
    ],
)
def test_a_decision_reads_back_as_written(made):
    assert parse_decision(b"p", made.to_json()) == made


def test_the_earlier_decisions_read_back_in_order():
    rollback = decision("rollback", reason="too slow")
    swap = decision("swap", "champion", request=SWAP, version="7", decided_at=1_700_000_001_000).after(rollback)
    read = parse_decision(b"p", swap.to_json())
    assert read.chain() == (rollback, swap)
    assert orjson.loads(swap.to_json())["earlier"][0]["action"] == "rollback"


def record(**changes) -> bytes:
    doc = {**decision().as_dict(), **changes}
    return orjson.dumps({k: v for k, v in doc.items() if v is not ...})


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b"\xff\xfe", "not JSON"),
        (b" " * (MAX_RECORD_BYTES + 1), "more than a decision's"),
        (record(action="delete"), "'action' is 'delete'"),
        (record(action=["promote"]), "'action' is not a short printable string"),
        (record(role="champion"), "'role' of a promote is 'champion'"),
        (record(action="rollback", role="shadow", shadow="s"), "'role' of a rollback is 'shadow'"),
        (record(version=2), "'version' is not a short printable string"),
        (record(version=""), "'version' is not a short printable string"),
        (record(version="v\n2"), "'version' is not a short printable string"),
        (record(model="x" * 5000), "'model' is not a short printable string"),
        (record(decided_at="yesterday"), "'decided_at' is not milliseconds"),
        (record(decided_at=True), "'decided_at' is not milliseconds"),
        (record(decided_at=-1), "'decided_at' is not milliseconds"),
        # Past year 9999: describe() (the worker's start line, every ignored decision's line) raised ValueError.
        (record(decided_at=2**63 - 1), "'decided_at' is not milliseconds"),
        (record(decided_at=MAX_DECIDED_AT + 1), "'decided_at' is not milliseconds"),
        (record(pipeline=...), "'pipeline' is not a short printable string"),
        (record(pipeline="other"), "keyed 'p' but about pipeline 'other'"),
        (record(shadow="s"), "'shadow' belongs to a promoted shadow only"),
        (record(request=SWAP), "'request' belongs to a swap only"),
        (record(trust_torchscript=True), "unknown field(s) ['trust_torchscript']"),
        (record(action="swap", role="champion"), "'request' is not a swap request"),
        (record(action="swap", role="champion", request="demo"), "'request' is not a swap request"),
        (record(action="swap", role="champion", request={"demo": ["x"]}), "holds something other than"),
        (record(action="swap", role="champion", request={f"k{i}": "v" for i in range(50)}), "not a swap request"),
        (record(earlier={"action": "swap"}), "'earlier' is not a list"),
        (record(earlier=[decision().as_dict()] * (MAX_EARLIER + 1)), "'earlier' is not a list of at most"),
        (record(earlier=[{**decision().as_dict(), "earlier": []}]), "has an 'earlier' of its own"),
        (record(earlier=[{**decision().as_dict(), "action": "exec"}]), "'action' is 'exec'"),
    ],
)
def test_a_record_that_is_not_a_decision_is_refused_with_the_reason(value, why):
    with pytest.raises(InvalidDecision) as refused:
        parse_decision(b"p", value)
    assert why in str(refused.value)


def test_a_record_without_the_pipelines_key_is_refused():
    with pytest.raises(InvalidDecision, match="keyed None but about pipeline 'p'"):
        parse_decision(None, decision().to_json())


def test_a_new_decision_keeps_what_it_does_not_replace_and_drops_what_it_does():
    rollback = decision("rollback", reason="slow", decided_at=1)
    swap = decision("swap", "champion", request=SWAP, version="7", decided_at=2).after(rollback)
    assert swap.earlier == (rollback,), "a swap leaves the canary rolled back"
    promote_shadow = decision(role="shadow", shadow="s", decided_at=3).after(swap)
    assert promote_shadow.earlier == (rollback,), "the swap's champion is replaced; the roll-back stays"
    again = decision("rollback", reason="again", decided_at=4).after(promote_shadow)
    assert [d.what for d in again.chain()] == ["promote shadow:s", "rollback canary"], "one roll-back is enough"
    other_shadow = decision(role="shadow", shadow="t", decided_at=5).after(again)
    assert [d.what for d in other_shadow.chain()] == [
        "promote shadow:s",
        "rollback canary",
        "promote shadow:t",
    ], "each promoted shadow stays gone"


def test_the_kept_chain_is_bounded():
    latest: Decision | None = None
    for n in range(3 * MAX_EARLIER):
        latest = decision(role="shadow", shadow=f"s{n}", decided_at=n).after(latest)
    assert latest is not None and len(latest.earlier) == MAX_EARLIER
    assert latest.earlier[-1].shadow == f"s{3 * MAX_EARLIER - 2}", "the oldest go first"
    assert len(latest.to_json()) < MAX_RECORD_BYTES


def test_every_readable_decision_can_say_when_it_was_taken():
    # A record's decided_at is logged at the worker's start and in every line about it: the
    # largest one read must still be a date, or a crafted record stops every restart.
    latest = parse_decision(b"p", record(decided_at=MAX_DECIDED_AT))
    assert "9999-12-31" in latest.describe()
