"""A decision about which models serve a pipeline: the record every worker of the app applies.

Kept in the compacted topic ``[app] decisions_topic`` (``<app id>.model-decisions``), keyed by
pipeline name, so the topic holds each pipeline's latest decision for as long as it exists. The
value is a JSON object:

    pipeline    the pipeline's name (equal to the record's key)
    action      "promote", "rollback" or "swap"
    role        what the action is about: "canary" or "shadow" (promote), "canary" (rollback),
                "champion" (swap)
    shadow      the shadow's name in [pipelines.NAME.shadows] (promote shadow only)
    request     the swap request, as POST /pipelines/NAME/model takes it (swap only)
    model       the model's name and version: the promoted canary or shadow, the canary rolled
    version     back, the model swapped in
    decided_at  when, in milliseconds since the epoch
    by          the worker that wrote it (its consumer's client id, and its host)
    reason      why, when a worker says (an automatic roll-back's broken limit)
    earlier     the decisions still in effect from before, oldest first, each without its own:
                only the latest record per pipeline survives compaction, and a swap after a
                roll-back must not bring the rolled-back canary back at the next restart

A record is input, not trust: anyone who can write the topic could write one. Parsing takes only
what this format allows, in bounded sizes; ``app.decision_rules`` then holds each decision to the
worker's own config (a swap request meets ``swap_spec``, as the endpoint's would).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast

import orjson

Action = Literal["promote", "rollback", "swap"]
ROLES: dict[str, tuple[str, ...]] = {"promote": ("canary", "shadow"), "rollback": ("canary",), "swap": ("champion",)}
FIELDS = frozenset(
    {"pipeline", "action", "role", "shadow", "request", "model", "version", "decided_at", "by", "reason", "earlier"}
)
# A decision is a few hundred bytes; a record far larger is not one, and is not parsed.
MAX_RECORD_BYTES = 64 * 1024
MAX_TEXT = 1024
# Decisions kept in ``earlier``: a few per role; past this the oldest go (``after``).
MAX_EARLIER = 16
MAX_REQUEST_FIELDS = 8
# The last millisecond of 9999-12-31 UTC: past it, ``datetime`` cannot say when a decision was taken.
MAX_DECIDED_AT = 253_402_300_799_999


class InvalidDecision(ValueError):
    """A record of the decisions topic that is not a decision this worker can read: why."""


@dataclass(frozen=True)
class Decision:
    pipeline: str
    action: Action
    role: str
    model: str
    version: str
    decided_at: int
    by: str
    shadow: str | None = None
    request: Mapping[str, str] | None = None
    reason: str | None = None
    earlier: tuple[Decision, ...] = field(default=(), compare=False)

    @property
    def identity(self) -> tuple[int, str, str]:
        """What tells one decision from another: when, by whom, what."""
        return self.decided_at, self.by, self.what

    @property
    def what(self) -> str:
        """``promote canary``, ``promote shadow:NAME``, ``rollback canary``, ``swap champion``."""
        return f"{self.action} {self.role}" + (f":{self.shadow}" if self.shadow else "")

    def describe(self) -> str:
        at = datetime.fromtimestamp(self.decided_at / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{self.what} ({self.model} v{self.version}, by {self.by} at {at})"

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "pipeline": self.pipeline,
            "action": self.action,
            "role": self.role,
            "model": self.model,
            "version": self.version,
            "decided_at": self.decided_at,
            "by": self.by,
        }
        if self.shadow is not None:
            doc["shadow"] = self.shadow
        if self.request is not None:
            doc["request"] = dict(self.request)
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.earlier:
            doc["earlier"] = [d.as_dict() for d in self.earlier]
        return doc

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict())

    def chain(self) -> tuple[Decision, ...]:
        """Every decision in effect, oldest first, this one last."""
        return (*self.earlier, replace(self, earlier=()))

    def after(self, previous: Decision | None) -> Decision:
        """This decision with what stays in effect of ``previous``'s chain as its ``earlier``."""
        kept = [d for d in (previous.chain() if previous else ()) if not _covers(self, d)]
        return replace(self, earlier=tuple(kept[-MAX_EARLIER:]))


def _covers(new: Decision, old: Decision) -> bool:
    """Whether ``new`` leaves nothing of ``old`` in effect."""
    if new.action in ("promote", "swap") and old.action == "swap":
        return True  # a swap only ever set the champion, which ``new`` sets again
    if new.role == "canary" and old.role == "canary" and old.action == "rollback":
        return True  # the canary is gone either way
    return new.action == old.action == "promote" and (new.role, new.shadow) == (old.role, old.shadow)


def new_decision(
    pipeline: str, action: Action, role: str, *, model: str, version: str, by: str, **rest: Any
) -> Decision:
    """A decision taken now."""
    return Decision(pipeline, action, role, model, version, int(time.time() * 1000), by, **rest)


def parse_decision(key: bytes | None, value: bytes) -> Decision:
    """The decision in a record of the decisions topic, or ``InvalidDecision`` saying why not."""
    if len(value) > MAX_RECORD_BYTES:
        raise InvalidDecision(f"{len(value):,} bytes, more than a decision's {MAX_RECORD_BYTES:,}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidDecision(f"not JSON ({exc})") from None
    decision = _decision(doc, nested=False)
    if key != decision.pipeline.encode():
        shown = key.decode(errors="replace")[:100] if key is not None else None
        raise InvalidDecision(f"keyed {shown!r} but about pipeline {decision.pipeline!r}")
    return decision


def _decision(doc: Any, *, nested: bool) -> Decision:
    if not isinstance(doc, dict):
        raise InvalidDecision(f"a JSON {type(doc).__name__}, not an object")
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        # Written by a later sluice, or by hand: acting on part of a decision could be worse than none.
        raise InvalidDecision(f"unknown field(s) {[name[:40] for name in unknown[:5]]}")
    if nested and "earlier" in doc:
        raise InvalidDecision("a decision in 'earlier' has an 'earlier' of its own")
    action = _text(doc, "action")
    if action not in ROLES:
        raise InvalidDecision(f"'action' is {action!r}, not one of {sorted(ROLES)}")
    role = _text(doc, "role")
    if role not in ROLES[action]:
        raise InvalidDecision(f"'role' of a {action} is {role!r}, not one of {list(ROLES[action])}")
    decided_at = doc.get("decided_at")
    if not isinstance(decided_at, int) or isinstance(decided_at, bool) or not 0 <= decided_at <= MAX_DECIDED_AT:
        raise InvalidDecision("'decided_at' is not milliseconds since the epoch")
    _only_for(doc, "shadow", role == "shadow", "a promoted shadow")
    _only_for(doc, "request", action == "swap", "a swap")
    shadow = _text(doc, "shadow") if role == "shadow" else None
    request = _request(doc.get("request")) if action == "swap" else None
    reason = _text(doc, "reason") if doc.get("reason") is not None else None
    earlier = () if nested else tuple(_decision(d, nested=True) for d in _earlier(doc.get("earlier", [])))
    return Decision(
        _text(doc, "pipeline"),
        cast(Action, action),
        role,
        _text(doc, "model"),
        _text(doc, "version"),
        decided_at,
        _text(doc, "by"),
        shadow=shadow,
        request=request,
        reason=reason,
        earlier=earlier,
    )


def short_text(value: object) -> bool:
    """Whether ``value`` is text a decision may hold (a model, version, reason...): every worker
    reads back only such text, so nothing else may be written."""
    return isinstance(value, str) and bool(value.strip()) and len(value) <= MAX_TEXT and value.isprintable()


def _text(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not short_text(value):
        raise InvalidDecision(f"{name!r} is not a short printable string")
    return value


def _only_for(doc: dict[str, Any], name: str, belongs: bool, only: str) -> None:
    if not belongs and doc.get(name) is not None:
        raise InvalidDecision(f"{name!r} belongs to {only} only")


def _request(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_REQUEST_FIELDS:
        raise InvalidDecision("'request' is not a swap request (a JSON object of a few strings)")
    if not all(isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_TEXT for k, v in value.items()):
        raise InvalidDecision("'request' holds something other than short strings")
    return value


def _earlier(value: Any) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_EARLIER:
        raise InvalidDecision(f"'earlier' is not a list of at most {MAX_EARLIER} decisions")
    return value
