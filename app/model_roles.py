"""The models of a pipeline's roles (``[pipelines.NAME.canary]``, ``.fallback``, ``.shadows``),
loaded, checked and warmed up like the champion, and put together around it.

A worker uses every role. A backfill uses the canary (a key meets the same model on history as
live) but no fallback: a fallback's scores stand in for decisions that could not wait, and a
backfill can wait; its model failing stops it, to be resumed. A live shadow's model runs in a
process of its own (``models.process_runner``: its own GIL, the lowest priority, one thread), so it
takes at most one core from the champion and never holds the worker's interpreter.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from app.build import build_runner, load_checked_model
from app.config import Config, PipelineConfig
from app.config.roles import ShadowConfig
from app.shadow_process import ShadowWriter
from models.loading import LoadedModel
from models.process_runner import ProcessRunner
from models.protocol import Runner
from models.runner import TorchRunner
from models.spec import ModelSpec
from streams.errors import ModelLoadError
from streams.flow.breaker import BreakerPolicy
from streams.flow.canary import Canary
from streams.flow.cost_model import CostModel
from streams.flow.delivery import Sink
from streams.flow.model_stats import ModelBook
from streams.flow.roles import ConstantRunner, Roles
from streams.flow.shadow import Shadow

log = logging.getLogger(__name__)

Mode = Literal["live", "backfill"]
R = TypeVar("R", bound=Runner)
# A shadow's thread runs at the lowest priority: when the host's cores are busy, the champion,
# the event loop and a broker beside them go first, and the shadow falls behind (and skips).
SHADOW_NICE = 19
# The shortest inference timeout a shadow gets (see shadow_timeout_s).
SHADOW_MIN_TIMEOUT_S = 30.0
# A backfill without a configured timeout still notices a hung model, long after any healthy batch.
BACKFILL_TIMEOUT_S = 300.0


@dataclass
class RoleRunners:
    """The non-champion models of a pipeline, loaded and warm, not yet put to work."""

    canary: TorchRunner | None = None
    fallback: Runner | None = None
    shadows: list[tuple[ShadowConfig, Runner]] = field(default_factory=list)

    def all(self) -> list[Runner]:
        return [r for r in (self.canary, self.fallback, *(s for _, s in self.shadows)) if r is not None]

    @contextlib.contextmanager
    def shadows_paused(self) -> Iterator[None]:
        """The shadows' processes stopped meanwhile (``models.process_pause``): live, while the
        champion scores a batch. Those of ``pause_while_champion_scores = false`` run on; the list
        is read each time, so a shadow a decision let go is no longer paused."""
        wanted = [r for c, r in self.shadows if c.pause_while_champion_scores and isinstance(r, ProcessRunner)]
        paused: list[ProcessRunner] = []
        try:
            for runner in wanted:
                runner.pause()
                paused.append(runner)
            yield
        finally:
            for runner in paused:
                runner.resume()

    async def aclose(self) -> None:
        for runner in self.all():
            await runner.aclose()


def load_runner(
    config: Config, p: PipelineConfig, spec: ModelSpec, loaded: LoadedModel | None = None
) -> tuple[TorchRunner, CostModel]:
    """``spec`` (or ``loaded``, the same model loaded already) on its device, warmed up, with the cost
    model its warm-up measured (blocking: call it off the event loop). A model that does not load,
    or does not score the pipeline's inputs, is a ``ModelLoadError`` naming it."""
    loaded = loaded or load_checked_model(p, spec)
    try:
        return build_runner(config, p, loaded)
    except Exception as exc:  # Broad on purpose: a model can fail its warm-up any way
        inputs = ", ".join(f"{i.name} {list(i.shape)}" for i in p.inputs)
        raise ModelLoadError(
            f"{spec.describe()} does not score the inputs of pipeline {p.name} ({inputs}): {exc}"
        ) from exc


def load_role_runners(config: Config, p: PipelineConfig, mode: Mode) -> RoleRunners:
    """Load every model of ``p``'s roles (blocking: call it off the event loop).

    A canary, fallback or shadow whose model does not load or fit is left out with one ERROR line
    naming its table, and the pipeline serves without it: a candidate's broken file must not stop
    the champion's decisions (nor can a start-up check refuse it: the group's decisions may have
    rolled that very model back, and only the running worker reads them)."""
    runners = RoleRunners()
    try:
        roles = p.roles
        if roles.canary is not None:
            canary = roles.canary.model
            runners.canary = _or_none(p, "canary", lambda: _warm(config, p, canary))
        if mode == "live" and roles.fallback is not None:
            fallback = roles.fallback.model
            if fallback is not None:
                runners.fallback = _or_none(p, "fallback", lambda: _warm(config, p, fallback))
            else:
                runners.fallback = ConstantRunner(roles.fallback.constant or 0.0)
        for shadow in roles.shadows:
            spec = shadow.model
            loaded = _or_none(p, f"shadows.{shadow.name}", lambda: _shadow_runner(config, p, spec, shadow))  # noqa: B023 - called at once
            if loaded is not None:
                runners.shadows.append((shadow, loaded))
    except BaseException:
        for runner in runners.all():
            if isinstance(runner, TorchRunner | ProcessRunner):
                runner.close()
        raise
    return runners


def _warm(
    config: Config, p: PipelineConfig, spec: ModelSpec, *, threads: int | None = None, nice: int = 0
) -> TorchRunner:
    return build_runner(config, p, load_checked_model(p, spec), threads=threads, nice=nice)[0]


def _shadow_runner(config: Config, p: PipelineConfig, spec: ModelSpec, shadow: ShadowConfig) -> Runner:
    """A shadow's model on one thread at the lowest priority: in a process of its own unless
    ``isolation = "thread"`` (which saves the process's memory, and costs the champion latency)."""
    if shadow.isolation == "thread":
        return _warm(config, p, spec, threads=1, nice=SHADOW_NICE)
    runner = ProcessRunner(
        functools.partial(_warm, config, p, spec, threads=1),
        what=f"pipeline {p.name}'s shadow {shadow.name}",
        nice=SHADOW_NICE,
        timeout_s=shadow_timeout_s(p),
        # Its process writes its records too: the worker only hands each batch over.
        aside=functools.partial(ShadowWriter, config, p),
    )
    runner.start()
    return runner


def shadow_timeout_s(p: PipelineConfig) -> float | None:
    """A shadow's inference timeout: the champion's, but never under ``SHADOW_MIN_TIMEOUT_S``. A
    shadow runs at the lowest priority on gathered batches, so on a busy host it may wait long for
    a core; ending its process then (and loading the model again) would cost more than waiting."""
    champion = p.roles.breaker.timeout_s
    return None if champion is None else max(champion, SHADOW_MIN_TIMEOUT_S)


def _or_none(p: PipelineConfig, table: str, load: Callable[[], R]) -> R | None:
    try:
        return load()
    except ModelLoadError as exc:
        log.error(
            "pipeline %s: [pipelines.%s.%s] left out, serving without it: %s; fix the table and restart",
            p.name,
            p.name,
            table,
            exc,
        )
        return None


def breaker_policy(p: PipelineConfig, mode: Mode) -> BreakerPolicy:
    policy = p.roles.breaker
    if mode == "backfill" and not p.roles.timeout_set:
        return replace(policy, timeout_s=BACKFILL_TIMEOUT_S)
    return policy


def build_roles(
    p: PipelineConfig,
    champion: Runner,
    runners: RoleRunners,
    mode: Mode,
    book: ModelBook | None = None,
    on_rollback: Callable[[str], None] | None = None,
) -> Roles:
    """``on_rollback``: told why, when the canary breaks a limit of its own (it scores nothing after)."""
    canary = p.roles.canary
    return Roles(
        champion,
        canary=Canary(runners.canary, canary.fraction) if canary is not None and runners.canary else None,
        fallback=runners.fallback if mode == "live" else None,
        policy=breaker_policy(p, mode),
        rollback=canary.rollback if canary is not None else None,
        book=book,
        pipeline=p.name,
        on_rollback=on_rollback,
    )


def build_shadows(p: PipelineConfig, runners: RoleRunners, sink: Sink, book: ModelBook) -> Sequence[Shadow]:
    """One ``Shadow`` per configured shadow of a live pipeline, writing to its shadow topic through ``sink``."""
    return [
        Shadow(
            runner,
            sink=sink,
            topic=p.roles.shadow_topic,
            pipeline=p.name,
            stats=book.of("shadow", runner.name, runner.version),
            threshold=p.roles.decision_threshold,
            queue_batches=shadow.queue_batches,
            timeout_s=shadow_timeout_s(p),
            gather_s=shadow.gather_ms / 1000,
            # A gathered batch at most as large as the champion's largest.
            gather_rows=p.max_batch_size,
            aside=runner if isinstance(runner, ProcessRunner) and runner.aside is not None else None,
        )
        for shadow, runner in runners.shadows
    ]
