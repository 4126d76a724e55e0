"""The models of a backfill run: its champion, and with ``--models`` the candidates scored beside it.

The champion serves the run's outputs as a lone model does; each candidate is a ``Shadow`` on
the very batches the champion scored, with the same per-key features, writing to the shadow
destination (``app.backfill_args.shadow_target``). A backfill has no budget to keep, so a shadow
waits for room instead of skipping (``wait=True``), and before each checkpoint the run waits
until every shadow has scored and delivered what it was offered (``settle_shadows``): a
checkpoint, the last one included, never counts an event some model has not scored.

Each model is given the inputs it takes (``app.model_inputs``): the demo MLP beside the
transformer in the transformer's pipeline gets its ``features`` only.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from app.backfill_args import Run
from app.build import build_runner, load_checked_model, settle_garbage_collector
from app.config import Config
from app.model_inputs import load_fitted_model, narrowed, taking
from app.model_roles import breaker_policy
from models.protocol import Runner
from models.runner import TorchRunner
from models.spec import ModelSpec
from streams.errors import CommandLineError
from streams.flow.breaker import BreakerPolicy
from streams.flow.canary import Canary
from streams.flow.cost_model import CostModel
from streams.flow.delivery import Sink
from streams.flow.model_stats import ModelBook
from streams.flow.pipeline import PipelineTopics
from streams.flow.roles import Roles
from streams.flow.scored_groups import OnScored
from streams.flow.shadow import Shadow

# A candidate that hangs would hold the whole run (shadows wait in a backfill): past this, its
# batch is given up, counted as a timeout, and the run goes on.
SHADOW_TIMEOUT_S = 300.0


def model_label(runner: Runner) -> str:
    return f"{runner.name} v{runner.version}"


@dataclass(frozen=True)
class RunModels:
    """The run's models, loaded, checked and warm: the champion (with the cost model its batches
    are sized by) and the candidates, their evidence in one ``book``."""

    champion: Runner
    cost: CostModel
    candidates: tuple[Runner, ...]
    book: ModelBook
    # The config's canary, when the run serves the configured model: its keys meet it on history too.
    canary: Canary | None = None
    policy: BreakerPolicy | None = None

    @property
    def all(self) -> tuple[Runner, ...]:
        return (self.champion, *self.candidates)

    def roles(self, pipeline: str) -> Roles:
        """The champion as the pipeline serves it (with the config's canary on its keys), its stats
        in the run's book; every model call under the backfill's inference timeout."""
        return Roles(self.champion, canary=self.canary, policy=self.policy, book=self.book, pipeline=pipeline)


def _loaded(config: Config, run: Run, spec: ModelSpec) -> tuple[TorchRunner, tuple[int, ...] | None, CostModel]:
    """One model, loaded, fitted to the inputs it takes, warmed up (blocking: run it off the loop)."""
    loaded, taken = load_fitted_model(run.pipeline, spec)
    runner, cost = build_runner(config, narrowed(run.pipeline, taken), loaded)
    return runner, taken, cost


@asynccontextmanager
async def opened_models(config: Config, run: Run, specs: Sequence[ModelSpec]) -> AsyncIterator[RunModels]:
    """Every model of ``specs`` (the champion first); two that would label their outputs alike are
    refused, since their outputs and their report lines could not be told apart."""
    loaded: list[TorchRunner] = []  # closed on the way out, however it ends
    runners: list[Runner] = []  # as the pipeline calls them: each given the inputs it takes
    cost: CostModel | None = None
    try:
        for spec in specs:
            torch_runner, taken, its_cost = await asyncio.to_thread(_loaded, config, run, spec)
            loaded.append(torch_runner)
            runner = taking(torch_runner, taken)
            runners.append(runner)
            cost = its_cost if cost is None else cost  # the champion's: it sizes the batches
            twins = [r for r in runners[:-1] if model_label(r) == model_label(runner)]
            if twins:
                raise CommandLineError(
                    f"--models: two of the models are {model_label(runner)}; their outputs could not be told apart "
                    "(give a model file its own name or version)"
                )
        assert cost is not None
        canary = None
        p = run.pipeline
        if p.roles.canary is not None and list(specs) == [p.model] and run.labels is None:
            # A backfill of what the pipeline serves gives the canary's keys to the canary, as live;
            # an evaluation (--labels) judges the champion alone, on every event.
            canary_runner, _ = await asyncio.to_thread(
                build_runner, config, p, await asyncio.to_thread(load_checked_model, p, p.roles.canary.model)
            )
            loaded.append(canary_runner)
            canary = Canary(canary_runner, p.roles.canary.fraction)
        settle_garbage_collector()  # as the worker does: full collections over torch's heap cost more than decoding
        yield RunModels(runners[0], cost, tuple(runners[1:]), ModelBook(), canary, breaker_policy(p, "backfill"))
    finally:
        for torch_runner in loaded:
            await torch_runner.aclose()


def build_shadows(
    run: Run, models: RunModels, sink: Sink, topics: PipelineTopics, recorders: Sequence[OnScored | None]
) -> list[Shadow]:
    """A waiting ``Shadow`` per candidate, writing to ``topics.output`` through ``sink``; each hands
    its scores to its recorder (an evaluation's collector), if any."""
    return [
        Shadow(
            runner,
            sink=sink,
            topic=topics.output,
            pipeline=run.pipeline.name,
            stats=models.book.of("shadow", runner.name, runner.version),
            wait=True,
            key_by_position=True,
            timeout_s=SHADOW_TIMEOUT_S,
            on_scored=recorder,
        )
        for runner, recorder in zip(models.candidates, recorders, strict=True)
    ]


async def settle_shadows(shadows: Sequence[Shadow]) -> None:
    """Until every shadow scored and delivered what it was offered (it starts again when offered more)."""
    for shadow in shadows:
        await shadow.drain()


def models_summary(models: RunModels, shadows: Sequence[Shadow]) -> list[str]:
    """What each candidate did, against the champion, for the run's last lines."""
    if not shadows:
        return []
    lines = []
    champion = model_label(models.champion)
    for shadow in shadows:
        stats = shadow.stats
        line = f"candidate {model_label(shadow.runner)}: {stats.events:,} events scored -> {shadow.topic}"
        agreement = stats.agreement
        if agreement is not None and agreement.mean_abs_diff is not None and agreement.flip_share is not None:
            line += (
                f"; against {champion}: mean |difference| {agreement.mean_abs_diff:.4f}, decisions differ at "
                f"{agreement.threshold:g} on {agreement.flip_share:.2%}"
            )
        failed = stats.errors + stats.timeouts
        if failed or shadow.lost_outputs:
            line += (
                f"; NOT EVERY EVENT: {stats.errors} failed batch(es), {stats.timeouts} timed out, "
                f"{shadow.lost_outputs} output(s) not delivered (see the log)"
            )
        lines.append(line)
    return lines


def say(lines: Sequence[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr, flush=True)
