"""A pipeline's models beside its champion: ``[pipelines.NAME.canary]``, ``.fallback``,
``.shadows.SHADOW`` and ``.breaker``.

Each model table takes the keys ``[pipelines.NAME.model]`` takes (``demo``, ``exported``,
``torchscript``, ``class`` with ``state_dict``; ``name``, ``version``), plus its role's own:
a canary's share of keys and its roll-back limits, a shadow's queue, a fallback's ``constant``
instead of a model. Every model is loaded and checked at start, like the champion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.addresses import is_topic
from app.config.model import load_model
from app.config.table import Table
from models.spec import ModelSpec
from streams.errors import ConfigError
from streams.flow.breaker import BreakerPolicy
from streams.flow.rollback import RollbackLimits

# Ten budgets is far past any healthy batch (the batcher sizes batches to a fraction of one);
# the floor spares a model the first slow batches of a cold process.
TIMEOUT_BUDGETS = 10
MIN_TIMEOUT_S = 1.0
# Without a budget (an infinite one), a batch may be large: only a hang is worth a timeout.
NO_BUDGET_TIMEOUT_S = 60.0
MAX_TIMEOUT_MS = 3_600_000.0
MAX_QUEUE_BATCHES = 1024
# A shadow gathers the champion's batches at most this long (its records are evidence, not decisions).
MAX_GATHER_MS = 10_000
MAX_SHADOW_NAME = 100


@dataclass(frozen=True)
class CanaryConfig:
    model: ModelSpec
    fraction: float
    rollback: RollbackLimits


@dataclass(frozen=True)
class ShadowConfig:
    name: str
    model: ModelSpec
    # Batches waiting for the shadow before it skips one (live only; a backfill waits instead).
    queue_batches: int = 4
    # "process" (its own interpreter: never holds the worker's GIL) or "thread" (no extra process).
    isolation: str = "process"
    # Live, the champion's batches are gathered this long into one of the shadow's (streams.flow.shadow_gather).
    gather_ms: int = 100
    # Live, its process is stopped while the champion scores a batch (models.process_pause).
    pause_while_champion_scores: bool = True


@dataclass(frozen=True)
class FallbackConfig:
    model: ModelSpec | None = None
    constant: float | None = None


@dataclass(frozen=True)
class RolesConfig:
    canary: CanaryConfig | None = None
    fallback: FallbackConfig | None = None
    shadows: tuple[ShadowConfig, ...] = ()
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    # Whether ``breaker.timeout_s`` was set in the file (else derived from the budget).
    timeout_set: bool = False
    shadow_topic: str = ""
    # A score at or above it is a positive decision: how a shadow's flips are counted.
    decision_threshold: float = 0.5


def derived_timeout_s(latency_budget_ms: float) -> float:
    if math.isinf(latency_budget_ms):
        return NO_BUDGET_TIMEOUT_S
    return max(MIN_TIMEOUT_S, TIMEOUT_BUDGETS * latency_budget_ms / 1000)


def load_roles(t: Table, base: Path, output_topic: str, latency_budget_ms: float) -> RolesConfig:
    """The roles of pipeline table ``t`` (its model tables are read here, its other keys elsewhere)."""
    canary = _canary(t.table("canary"), base) if "canary" in t.data else None
    fallback = _fallback(t.table("fallback"), base) if "fallback" in t.data else None
    shadows_table = t.table("shadows", {})
    shadows = tuple(_shadow(shadows_table.table(name), name, base) for name in list(shadows_table.data))
    shadows_table.done()
    breaker_table = t.table("breaker", {})
    timeout_ms = _optional(breaker_table, "timeout_ms", minimum=0, above=True, maximum=MAX_TIMEOUT_MS)
    breaker = BreakerPolicy(
        failures=breaker_table.integer("failures", 3, minimum=1, maximum=1_000_000),
        cooldown_s=breaker_table.number("cooldown_ms", 10_000.0, minimum=0, maximum=MAX_TIMEOUT_MS) / 1000,
        timeout_s=timeout_ms / 1000 if timeout_ms is not None else derived_timeout_s(latency_budget_ms),
    )
    breaker_table.done()
    shadow_topic = t.text("shadow_topic", None) or f"{output_topic}-shadow"
    if not is_topic(shadow_topic):
        raise t.fail("shadow_topic", shadow_topic, "a Kafka topic name: 1 to 249 letters, digits, '.', '_', '-'")
    return RolesConfig(
        canary=canary,
        fallback=fallback,
        shadows=shadows,
        breaker=breaker,
        timeout_set=timeout_ms is not None,
        shadow_topic=shadow_topic,
        decision_threshold=t.number("decision_threshold", 0.5, minimum=-math.inf, maximum=math.inf),
    )


def _canary(t: Table, base: Path) -> CanaryConfig:
    fraction = t.number("fraction", minimum=0, maximum=1, above=True, why="the share of keys the canary scores")

    def limit(name: str) -> float | None:
        return _optional(t, name, minimum=0, maximum=1)

    p99_ms = _optional(t, "max_p99_ms", minimum=0, above=True, maximum=MAX_TIMEOUT_MS)
    rollback = RollbackLimits(
        max_error_rate=limit("max_error_rate"),
        max_timeout_rate=limit("max_timeout_rate"),
        max_p99_s=p99_ms / 1000 if p99_ms is not None else None,
        min_batches=t.integer("min_batches", 20, minimum=1, maximum=1_000_000),
    )
    return CanaryConfig(_versioned(t, load_model(t, base)), fraction, rollback)


def _shadow(t: Table, name: str, base: Path) -> ShadowConfig:
    if not name or name != name.strip() or not name.isprintable() or len(name) > MAX_SHADOW_NAME:
        # Its name labels its outputs and metrics, and is what a promotion's decision record keeps,
        # which every worker reads back only as printable text.
        raise ConfigError(
            f"{t.path}: table '{t.prefix}': a shadow's name must be 1 to {MAX_SHADOW_NAME} printable characters, "
            f"without spaces around it (got {name!r})"
        )
    queue = t.integer("queue_batches", 4, minimum=1, maximum=MAX_QUEUE_BATCHES)
    isolation = t.choice("isolation", ("process", "thread"), "process")
    gather_ms = t.integer("gather_ms", 100, minimum=0, maximum=MAX_GATHER_MS)
    paused = t.flag("pause_while_champion_scores", True)
    spec = load_model(t, base)
    model = _versioned(t, spec if spec.name else _named(spec, name))
    return ShadowConfig(name, model, queue, isolation, gather_ms, paused)


def _fallback(t: Table, base: Path) -> FallbackConfig:
    if "constant" in t.data:
        constant = t.number("constant", minimum=-math.inf, maximum=math.inf)
        if not math.isfinite(constant):
            raise t.fail("constant", constant, "a finite number")
        t.done()
        return FallbackConfig(constant=constant)
    return FallbackConfig(model=load_model(t, base))


def _named(spec: ModelSpec, name: str) -> ModelSpec:
    return replace(spec, name=name)


def _optional(t: Table, name: str, *, minimum: float, maximum: float, above: bool = False) -> float | None:
    return t.number(name, minimum=minimum, maximum=maximum, above=above) if name in t.data else None


def _versioned(t: Table, spec: ModelSpec) -> ModelSpec:
    """A canary or shadow must say its version: its outputs and metrics are told apart by it."""
    if spec.version is None and spec.demo is None:
        raise t.fail("version", None, "a version for this model (its outputs and metrics are told apart by it)")
    return spec
