"""What ``POST /pipelines/NAME/model`` may ask: swap in another model (``app.model_swap``), promote
the canary or a shadow to champion, or roll the canary back.

    {"state_dict" | "exported" | "torchscript" | "demo": ..., "version": ..., "name": ...}   swap
    {"promote": "canary"}  or  {"promote": "shadow:NAME"}                                  promote
    {"rollback": "canary"}                                                                 roll back

A promotion or roll-back may carry a ``"reason"`` for the record. Each becomes a decision that
every worker of the group applies (``decision_for``, ``app.served_models``), unless it is in
effect already: each worker named on the command line is asked in turn, and the second one
has applied the first one's decision from the topic by then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.config import PipelineConfig
from app.decision_rules import Serving, model_label, same_model
from app.model_decisions import MAX_TEXT, Action, Decision, new_decision, short_text
from app.model_swap import swap_spec
from models.spec import ModelSpec
from streams.errors import SwapRejected

MAX_REASON = 1000


@dataclass(frozen=True)
class Swap:
    spec: ModelSpec
    # The request as sent: what the decision keeps, for every worker to check against its own config.
    body: Mapping[str, str]


@dataclass(frozen=True)
class Promote:
    role: str  # "canary" or "shadow"
    shadow: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Rollback:
    reason: str | None = None


ModelRequest = Swap | Promote | Rollback


def model_request(pipeline: PipelineConfig, body: Any) -> ModelRequest:
    """The request ``body`` makes of ``pipeline``, or ``SwapRejected`` saying why it is refused."""
    if isinstance(body, dict) and ("promote" in body or "rollback" in body):
        return _role_request(body)
    spec = swap_spec(pipeline, body)
    # The decision keeps the request and the model's label: what every worker must read back
    # (app.model_decisions), or the others would ignore it and this one forget it at a restart.
    name, version = model_label(spec)
    for field, value in (("name", name), ("version", version)):
        if not short_text(value):
            raise SwapRejected(400, f"{field!r} must be printable text of at most {MAX_TEXT} characters")
    if any(len(value) > MAX_TEXT for value in body.values()):
        raise SwapRejected(400, f"each field of a swap request is at most {MAX_TEXT} characters")
    return Swap(spec, dict(body))  # swap_spec took only strings


def _role_request(body: dict[str, Any]) -> Promote | Rollback:
    action = "promote" if "promote" in body else "rollback"
    unknown = sorted(set(body) - {action, "reason"})
    if unknown:
        raise SwapRejected(400, f"{action!r} takes only an optional 'reason' beside it; unexpected {unknown[:5]}")
    reason = body.get("reason")
    if reason is not None and (not short_text(reason) or len(reason) > MAX_REASON):
        # Printable: a decision with a line break in it is one no worker reads back (app.model_decisions).
        raise SwapRejected(
            400, f"'reason' must be a non-empty string, printable text on one line, of at most {MAX_REASON} characters"
        )
    target = body[action]
    if action == "rollback":
        if target != "canary":
            raise SwapRejected(400, f'only the canary is rolled back: send {{"rollback": "canary"}}, not {target!r}')
        return Rollback(reason)
    if target == "canary":
        return Promote("canary", reason=reason)
    if isinstance(target, str) and target.startswith("shadow:") and target[len("shadow:") :].strip():
        return Promote("shadow", target[len("shadow:") :], reason)
    raise SwapRejected(400, f'promote "canary" or "shadow:NAME" (a shadow of [pipelines.NAME.shadows]), not {target!r}')


@dataclass(frozen=True)
class Now:
    """What a request is judged against on this worker."""

    pipeline: PipelineConfig  # as written
    serving: Serving
    last: Decision | None
    canary_running: bool  # False once the canary rolled itself back here
    rolled_back: str | None  # why it did

    def in_effect(self, action: str, role: str, shadow: str | None = None) -> bool:
        chain = self.last.chain() if self.last is not None else ()
        return any((d.action, d.role, d.shadow) == (action, role, shadow) for d in chain)


def decided(p: PipelineConfig, action: Action, role: str, spec: ModelSpec, by: str, **rest: Any) -> Decision:
    """The decision, taken now by ``by``, to ``action`` the model ``spec`` of ``role``."""
    name, version = model_label(spec)
    return new_decision(p.name, action, role, model=name, version=version, by=by, **rest)


def decision_for(request: ModelRequest, now: Now, by: str) -> Decision | None:
    """The decision ``request`` makes, None if it is in effect already, or ``SwapRejected`` (409)
    when what it is about does not run here."""
    p, serving = now.pipeline, now.serving
    if isinstance(request, Swap):
        same = same_model(request.spec, serving.champion)
        return None if same else decided(p, "swap", "champion", request.spec, by, request=request.body)
    canary = serving.canary
    if isinstance(request, Rollback):
        if p.roles.canary is None:
            raise SwapRejected(409, f"pipeline {p.name} has no canary ([pipelines.{p.name}.canary])")
        if canary is None and now.in_effect("rollback", "canary"):
            return None
        if canary is None:
            raise SwapRejected(409, f"pipeline {p.name} has no canary to roll back: it was promoted")
        return decided(p, "rollback", "canary", canary.model, by, reason=request.reason)
    if request.role == "canary":
        if canary is None and now.in_effect("promote", "canary"):
            return None
        if canary is None or not now.canary_running:
            why = f"it was rolled back ({now.rolled_back})" if now.rolled_back else "it does not run"
            raise SwapRejected(409, f"pipeline {p.name} has no canary to promote: {why}")
        return decided(p, "promote", "canary", canary.model, by, reason=request.reason)
    shadow = serving.shadow(request.shadow or "")
    if shadow is None:
        if now.in_effect("promote", "shadow", request.shadow):
            return None
        names = [s.name for s in serving.shadows]
        raise SwapRejected(409, f"pipeline {p.name} has no shadow {request.shadow!r} (its shadows: {names})")
    return decided(p, "promote", "shadow", shadow.model, by, shadow=shadow.name, reason=request.reason)
