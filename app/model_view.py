"""What ``GET /pipelines/NAME/model`` shows: every role's model, the champion's circuit, and the
latest decision, so an operator sees on one page what a worker serves and why.

    {"pipeline", "model", "version",                       the champion, as before roles existed
     "roles": {"champion": {"model", "version"},
               "canary": {"model", "version", "fraction"} | null,
               "canary_rolled_back": why | null,
               "fallback": {"model", "version"} | null,
               "shadows": [{"name", "model", "version"}],
               "circuit": "closed" | "open" | "half_open"},
     "decision": the latest decision record (app.model_decisions) | null,
     "decisions_topic": where it is kept}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.model_decisions import Decision
from models.protocol import Runner
from streams.flow.roles import Roles
from streams.flow.shadow import Shadow


def label(runner: Runner) -> dict[str, str]:
    return {"model": runner.name, "version": runner.version}


def model_view(
    pipeline: str, roles: Roles, shadows: Mapping[str, Shadow], last: Decision | None, topic: str
) -> dict[str, Any]:
    """``shadows``: each running shadow by its name in the config."""
    canary = roles.canary
    return {
        "pipeline": pipeline,
        **label(roles.champion),
        "roles": {
            "champion": label(roles.champion),
            "canary": {**label(canary.runner), "fraction": canary.fraction} if canary is not None else None,
            "canary_rolled_back": roles.rolled_back,
            "fallback": label(roles.fallback) if roles.fallback is not None else None,
            "shadows": [{"name": name, **label(shadow.runner)} for name, shadow in shadows.items()],
            "circuit": roles.breaker.state.value,
        },
        "decision": last.as_dict() if last is not None else None,
        "decisions_topic": topic,
    }
