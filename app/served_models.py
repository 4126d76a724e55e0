"""Which models a running pipeline serves, and every change to them, each one a decision kept in
the decisions topic (``app.decision_log``): every worker of the group converges on it, and a
worker started later serves it too.

- At start (``load``), before any model is loaded: the topic read to its end, the pipeline's
  latest decision applied to its config (``app.decision_rules``), the resulting models loaded.
- Asked on this worker (``decide``, from ``POST /pipelines/NAME/model``): the request checked,
  the new champion loaded and warmed up beside the serving one, the decision written (every
  in-sync replica has it), then applied here; the other workers apply it from the topic. A
  model that does not load here is never decided for the group.
- Decided on another worker (``_follow``): applied between two batches; a decision already in
  effect changes nothing.
- The canary rolled back on its own (``canary_rolled_back``, called from inside the scoring
  path): a task writes the roll-back, so every worker stops its canary and a restart does not
  bring it back. The scoring path never waits for the broker.

Changes go one at a time (``_lock``): a request and its own record read back from the topic, or
two decisions arriving together, never interleave.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from app.config import Config, PipelineConfig
from app.decision_log import DecisionLog, Withdrawn
from app.decision_rules import NotApplicable, Serving, applied, fold, ignored_line, same_model
from app.model_decisions import Decision
from app.model_requests import Now, decided, decision_for, model_request
from app.model_roles import RoleRunners, load_role_runners, load_runner
from app.model_view import model_view
from models.loading import LoadedModel
from models.runner import TorchRunner
from models.spec import ModelSpec
from streams.errors import DeliveryFailed, ModelLoadError, SwapRejected
from streams.flow.cost_model import CostModel
from streams.flow.driver import Driver
from streams.flow.pipeline import Pipeline
from streams.flow.role_changes import RoleChange, change_roles
from streams.flow.shadow import Shadow

log = logging.getLogger(__name__)

Prepared = tuple[TorchRunner, CostModel]
# How long a stopping worker waits for a decision it is writing (a canary's roll-back).
STOP_WRITES_S = 10.0


class ServedModels:
    """Pipeline ``p``'s models on this worker; ``by`` names the worker in the decisions it writes."""

    def __init__(self, config: Config, p: PipelineConfig, *, by: str, decisions: DecisionLog | None = None) -> None:
        self.config, self.p, self.by = config, p, by
        self.decisions = decisions or DecisionLog(config, p.name)
        self.serving = Serving.of(p)  # what the decisions in effect make of the config
        self.last: Decision | None = None  # the latest decision read or written
        self.champion: TorchRunner | None = None
        self.cost: CostModel | None = None
        self.role_runners = RoleRunners()
        self.driver: Driver[Pipeline] | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._follower: asyncio.Task[None] | None = None
        self._told: set[tuple[int, str, str]] = set()  # ignored decisions already logged
        self._written: set[tuple[int, str, str]] = set()  # decisions this worker wrote

    async def load(self, preloaded: LoadedModel | None = None) -> PipelineConfig:
        """Read the decisions, then load the models they and the config say serve (``preloaded``:
        the config's champion, loaded already). Returns the config to build the pipeline from."""
        p = self.p
        self.last = await self.decisions.start()
        self.serving = fold(p, self.last, self._ignored)
        if self.last is not None:
            log.info("pipeline %s: latest model decision in %s: %s", p.name, self.decisions.topic, self.last.describe())
        champion = self.serving.champion
        configured = same_model(champion, p.model)
        try:
            loaded = preloaded if configured else None
            self.champion, self.cost = await asyncio.to_thread(load_runner, self.config, p, champion, loaded)
        except ModelLoadError as exc:
            if configured:
                raise  # the config's own model: the worker cannot serve
            log.error(
                "pipeline %s: cannot load the decided champion, serving the config's model instead (other workers "
                "may serve the decided one): %s; make it loadable here and restart, or decide again",
                p.name,
                exc,
            )
            self.serving = replace(self.serving, champion=p.model)
            self.champion, self.cost = await asyncio.to_thread(load_runner, self.config, p, p.model, preloaded)
        serving_config = self.serving.config(p)
        self.role_runners = await asyncio.to_thread(load_role_runners, self.config, serving_config, "live")
        return serving_config

    def attach(self, driver: Driver[Pipeline]) -> None:
        """Serve through ``driver`` from now on, and follow the decisions of the other workers."""
        self.driver = driver
        self._follower = self._spawn(self._follow(), f"sluice-decisions-{self.p.name}")

    async def decide(self, body: Any) -> dict[str, Any]:
        """Carry out a request of ``POST /pipelines/NAME/model`` for the whole group; what serves
        after it (``view``). ``SwapRejected`` (its HTTP status) or ``ModelLoadError`` when nothing changed."""
        request = model_request(self.p, body)
        async with self._lock:
            roles = self._driver().pipeline.roles
            now = Now(self.p, self.serving, self.last, roles.canary is not None, roles.rolled_back)
            decision = decision_for(request, now, self.by)
            if decision is None:
                return self.view()  # already in effect: nothing to write
            decision = decision.after(self.last)
            try:
                target = applied(self.p, self.serving, decision)
            except NotApplicable as exc:
                raise SwapRejected(409, str(exc)) from None
            prepared = await self._prepare(target.champion)
            try:
                await self._write(decision)
            except DeliveryFailed as exc:
                if prepared is not None:
                    await prepared[0].aclose()
                raise SwapRejected(
                    503,
                    f"nothing changed: the decision could not be written to {self.decisions.topic} ({exc}); "
                    "every worker serves on as before; try again once the broker takes writes",
                ) from exc
            await self._apply(target, prepared, decision)
        return self.view()

    def canary_rolled_back(self, reason: str) -> None:
        """``Roles.on_rollback``: record the roll-back for the group, without waiting for it here."""
        self._spawn(self._record_rollback(reason), f"sluice-rollback-{self.p.name}")

    async def _record_rollback(self, reason: str) -> None:
        async with self._lock:
            canary = self.serving.canary
            if canary is None:
                return  # decided already (by another worker, whose decision stopped this one's)
            decision = decided(self.p, "rollback", "canary", canary.model, self.by, reason=reason).after(self.last)
            try:
                await self._write(decision)
            except DeliveryFailed as exc:
                log.error(
                    "pipeline %s: the canary's roll-back could not be written to %s (%s): it stays stopped here, "
                    "but runs on other workers and comes back at a restart; record it: sluice swap-model -p %s "
                    "--rollback canary",
                    self.p.name,
                    self.decisions.topic,
                    exc,
                    self.p.name,
                )
                return
            log.warning(
                "pipeline %s: the canary's roll-back is recorded in %s: every worker of the group stops its "
                "canary, and a restart does not bring it back",
                self.p.name,
                self.decisions.topic,
            )
            await self._apply(replace(self.serving, canary=None), None, decision)

    async def _write(self, decision: Decision) -> None:
        await self.decisions.write(decision)
        self._written.add(decision.identity)

    async def _follow(self) -> None:
        while True:
            try:
                arrived = await self.decisions.arrived()
            except Exception:
                # Reading the topic failed (the broker away): serving goes on; try again shortly.
                log.exception("pipeline %s: reading %s failed; trying again", self.p.name, self.decisions.topic)
                await asyncio.sleep(5)
                continue
            for found in arrived:
                try:
                    async with self._lock:
                        await self._converge(found)
                except Exception:
                    # Whatever one decision does, the next ones are still followed.
                    log.exception("pipeline %s: applying a model decision failed; it serves on as before", self.p.name)

    async def _converge(self, found: Decision | Withdrawn) -> None:
        p = self.p
        if isinstance(found, Withdrawn):
            log.warning(
                "pipeline %s: its model decisions were deleted from %s (a tombstone at %s); this worker serves on "
                "as it does, and its config's models from its next restart",
                p.name,
                self.decisions.topic,
                found.where,
            )
            self.last = None
            return
        # Every record is applied in the topic's order, this worker's own too (which then changes
        # nothing): when two workers decide at once, each ends up serving the one written last.
        target = fold(p, found, self._ignored)
        try:
            prepared = await self._prepare(target.champion)
        except ModelLoadError as exc:
            log.error(
                "pipeline %s: cannot apply the decision to %s: %s; this worker serves on as before while others may "
                "follow it: make the model loadable here and restart, or decide again",
                p.name,
                found.describe(),
                exc,
            )
            return
        await self._apply(target, prepared, found)

    async def _prepare(self, spec: ModelSpec) -> Prepared | None:
        """``spec`` loaded and warmed up beside the serving champion; None if it is the champion already."""
        if same_model(spec, self.serving.champion):
            return None
        return await asyncio.to_thread(load_runner, self.config, self.p, spec)

    async def _apply(self, target: Serving, prepared: Prepared | None, decision: Decision) -> None:
        """Serve ``target`` from the next batch on, as ``decision`` says."""
        driver = self._driver()
        roles = driver.pipeline.roles
        live = self._shadows_by_name()
        dropped = tuple(shadow for name, shadow in live.items() if target.shadow(name) is None)
        if (target.canary is not None and self.serving.canary is None) or len(live) < len(target.shadows):
            # Decisions withdrawn, or a later one whose chain no longer stops them (two decided at
            # once): models are loaded at start, never added while serving.
            log.warning(
                "pipeline %s: the canary or shadows no decision stops now run from the next restart", self.p.name
            )
        rollback = next((d for d in reversed(decision.chain()) if d.action == "rollback"), None)
        rolled_back = (rollback.reason or f"rolled back by {rollback.by}") if rollback is not None else None
        change = RoleChange(
            prepared, stop_canary=target.canary is None, rollback_reason=rolled_back, drop_shadows=dropped
        )
        was = roles.champion
        retired = await change_roles(driver, change)
        if prepared is not None:
            self.champion, self.cost = prepared
        idle_canary = self.role_runners.canary if target.canary is None else None
        self.role_runners.canary = None if target.canary is None else self.role_runners.canary
        self.role_runners.shadows = [(c, r) for c, r in self.role_runners.shadows if target.shadow(c.name)]
        self.serving, self.last = target, decision
        now = roles.champion
        changes = [f"now serving model {now.name} v{now.version} (was {was.name} v{was.version})"] if prepared else []
        if retired.canary is not None:
            changes.append(
                "canary stopped" if prepared else f"canary stopped, {now.name} v{now.version} scores every key"
            )
        if retired.shadows:
            changes.append(f"shadow(s) {', '.join(s.runner.name for s in retired.shadows)} let go")
        if changes:
            log.warning("pipeline %s: %s, as decided: %s", self.p.name, ", ".join(changes), decision.describe())
        elif decision.identity not in self._written:
            log.info("pipeline %s: already in effect here: the decision to %s", self.p.name, decision.describe())
        await retired.aclose()
        if idle_canary is not None and idle_canary is not retired.canary:
            await idle_canary.aclose()  # stopped by its own roll-back earlier; idle since

    def _shadows_by_name(self) -> dict[str, Shadow]:
        shadows = self._driver().pipeline.shadows
        return {c.name: s for c, r in self.role_runners.shadows for s in shadows if s.runner is r}

    def _driver(self) -> Driver[Pipeline]:
        if self.driver is None:
            raise SwapRejected(503, f"pipeline {self.p.name} is not running yet")
        return self.driver

    def _ignored(self, decision: Decision, why: str) -> None:
        if decision.identity not in self._told:
            self._told.add(decision.identity)
            log.warning(ignored_line(self.p, decision, why))

    def view(self) -> dict[str, Any]:
        """``GET /pipelines/NAME/model`` (``app.model_view``)."""
        roles = self._driver().pipeline.roles
        return model_view(self.p.name, roles, self._shadows_by_name(), self.last, self.decisions.topic)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def stop_following(self) -> None:
        """No decision of another worker is applied from now on (the worker is stopping)."""
        if self._follower is not None:
            self._follower.cancel()

    async def aclose(self) -> None:
        self.stop_following()
        writing = [task for task in self._tasks if task is not self._follower]
        if writing:
            # A roll-back being written is worth a few seconds of a stop: unwritten, a restart
            # would bring the canary back.
            await asyncio.wait(writing, timeout=STOP_WRITES_S)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.decisions.stop()
        for runner in (self.champion, *self.role_runners.all()):
            if runner is not None:
                await runner.aclose()
