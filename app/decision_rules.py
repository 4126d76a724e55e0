"""What a pipeline serves once the decisions in the decisions topic are applied to its config.

``Serving`` is the champion's model, the canary (if one still runs) and the shadows (those not
promoted). A worker starts from its config as written (``Serving.of``) and applies each decision
of the latest record's chain in turn (``fold``). A decision applies only while the config still
says what it was about; otherwise it is ignored with a line saying why, and the config wins:

- promote canary / rollback canary: the config has a canary of the decision's model and version;
- promote shadow NAME: the config has shadow NAME of the decision's model and version;
- swap: the request passes ``swap_spec`` against this worker's config (folders, TorchScript
  trust), as the endpoint's would: a record gets no more than the endpoint allows;
- a promotion does not apply once the config's champion is the promoted model (the operator wrote
  the decision into the config: it is done).

Pure: no Kafka, no model is loaded here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from app.config import PipelineConfig
from app.config.roles import CanaryConfig, ShadowConfig
from app.model_decisions import Decision
from app.model_swap import swap_spec
from models.registry import DEMO_MODELS
from models.spec import ModelSpec
from streams.errors import SwapRejected

log = logging.getLogger(__name__)


class NotApplicable(ValueError):
    """A decision this worker's config does not allow (any more): why, for the operator."""


@dataclass(frozen=True)
class Serving:
    """The models a pipeline serves: its config's, changed by the decisions that apply."""

    champion: ModelSpec
    canary: CanaryConfig | None
    shadows: tuple[ShadowConfig, ...]

    @classmethod
    def of(cls, p: PipelineConfig) -> Serving:
        return cls(p.model, p.roles.canary, p.roles.shadows)

    def config(self, p: PipelineConfig) -> PipelineConfig:
        """``p`` serving these models: what the worker builds its runners from."""
        return replace(p, model=self.champion, roles=replace(p.roles, canary=self.canary, shadows=self.shadows))

    def shadow(self, name: str) -> ShadowConfig | None:
        return next((s for s in self.shadows if s.name == name), None)


def model_label(spec: ModelSpec) -> tuple[str, str]:
    """The (name, version) a model's outputs will carry, known without loading it: the rules of
    ``models.loading.load_model``."""
    if spec.demo is not None:
        demo = DEMO_MODELS.get(spec.demo)
        return spec.name or spec.demo, spec.version or (demo.version if demo else "?")
    if spec.exported is not None:
        return spec.name or spec.exported.stem, spec.version or "1"
    if spec.torchscript is not None:
        return spec.name or spec.torchscript.stem, spec.version or "1"
    cls = (spec.module_class or "?").rpartition(":")[2].rpartition(".")[2]
    return spec.name or cls, spec.version or "1"


def same_model(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether ``a`` and ``b`` load the same model under the same label (paths compared resolved)."""

    def source(spec: ModelSpec) -> tuple[object, ...]:
        paths = (spec.exported, spec.torchscript, spec.state_dict)
        resolved = tuple(Path(p).resolve() if p is not None else None for p in paths)
        return (spec.demo, spec.module_class, spec.init_args, *resolved, model_label(spec))

    return source(a) == source(b)


def applied(p: PipelineConfig, serving: Serving, decision: Decision) -> Serving:
    """``serving`` with ``decision`` applied, or ``NotApplicable`` saying why not; ``p`` is the
    config as written (what the decision is held to)."""
    if decision.pipeline != p.name:
        raise NotApplicable(f"it is about pipeline {decision.pipeline!r}")
    if decision.action == "swap":
        try:
            spec = swap_spec(p, dict(decision.request or {}))
        except SwapRejected as exc:
            raise NotApplicable(f"this worker refuses its swap request: {exc}") from None
        # Even to the config's own champion: that is how a promotion is undone by hand.
        return replace(serving, champion=spec)
    if decision.role == "canary":
        canary = p.roles.canary
        if canary is None:
            raise NotApplicable(f"the config has no canary now ([pipelines.{p.name}.canary])")
        _same_label(canary.model, decision, "canary")
        if decision.action == "rollback":
            return replace(serving, canary=None)
        _not_already_the_champion(p, canary.model)
        return replace(serving, champion=canary.model, canary=None)
    name = decision.shadow or ""
    shadow = next((s for s in p.roles.shadows if s.name == name), None)
    if shadow is None:
        raise NotApplicable(f"the config has no shadow {name!r} now ([pipelines.{p.name}.shadows.{name}])")
    _same_label(shadow.model, decision, f"shadow {name!r}")
    _not_already_the_champion(p, shadow.model)
    return replace(serving, champion=shadow.model, shadows=tuple(s for s in serving.shadows if s.name != name))


def _same_label(spec: ModelSpec, decision: Decision, role: str) -> None:
    name, version = model_label(spec)
    if (name, version) != (decision.model, decision.version):
        raise NotApplicable(f"the config's {role} is {name} v{version} now, not {decision.model} v{decision.version}")


def _not_already_the_champion(p: PipelineConfig, spec: ModelSpec) -> None:
    if same_model(p.model, spec):
        name, version = model_label(spec)
        raise NotApplicable(f"the config's champion already is {name} v{version}: nothing left to apply")


def fold(p: PipelineConfig, latest: Decision | None, on_ignored: Callable[[Decision, str], None]) -> Serving:
    """What ``p`` serves with ``latest`` and the decisions it keeps in effect applied, oldest
    first; each one that does not apply is skipped, and ``on_ignored`` told why."""
    serving = Serving.of(p)
    for decision in latest.chain() if latest is not None else ():
        try:
            serving = applied(p, serving, decision)
        except NotApplicable as exc:
            on_ignored(decision, str(exc))
    return serving


def ignored_line(p: PipelineConfig, decision: Decision, why: str) -> str:
    """The one log line of a decision the config does not allow: what, why, and what to do."""
    return (
        f"pipeline {p.name}: decision to {decision.describe()} ignored: {why}; the config wins: update "
        f"[pipelines.{p.name}] to the models that should serve, or decide again (sluice swap-model)"
    )
