"""One pipeline inside the Faust worker: a mode Service that owns its consumer, producer and model.

Faust gives the worker its lifecycle (start-up order, signals, web server, logging);
this service owns the consuming path, so batches flow through aiokafka's batch API
and offsets are committed only after outputs are acknowledged, not per event. Which models
serve is ``ServedModels``' (``app.served_models``): the config, with the group's decisions
(promote, roll back, swap) applied.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from mode import Service

from app.build import settle_garbage_collector
from app.cli import PROCESS_STARTED
from app.config import Config, PipelineConfig
from app.driver_task import stop_driver
from app.key_serving import KeyServing
from app.live_parts import LiveParts, build_live
from app.rekey_service import RekeyService
from app.served_models import ServedModels
from models.loading import LoadedModel
from streams.errors import SwapRejected
from streams.flow.driver import Driver
from streams.flow.partitions import Phase
from streams.flow.pipeline import Pipeline
from streams.kafka.changelog import Changelog
from streams.metrics import PipelineMetrics

log = logging.getLogger(__name__)

# How long a stopping worker lets its shadows score what they were offered: their records are
# evidence, not decisions, and a shadow whose model hangs would otherwise hold the stop for a
# timeout per queued batch.
SHADOW_STOP_S = 5.0


class PipelineService(Service):
    """Runs one configured pipeline for as long as the worker runs."""

    def __init__(
        self,
        config: Config,
        pipeline: PipelineConfig,
        model: LoadedModel | None = None,
        metrics: PipelineMetrics | None = None,
        web_address: Callable[[], str] | None = None,
        rekey: RekeyService | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        # Keyed by an event field: the stage that feeds this pipeline's repartition topic.
        self.rekey = rekey
        if rekey is not None:
            self.add_dependency(rekey)
        self.config = config
        self.pipeline_config = pipeline
        self._model = model
        self.metrics = metrics or PipelineMetrics(pipeline.name)
        self.parts: LiveParts | None = None
        self.models: ServedModels | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._crashing: asyncio.Future[None] | None = None
        self._announce: asyncio.Task[None] | None = None
        # ``web_address``: where other workers reach this one's web server, named in its consumer's
        # client id, so a worker asked about a key it does not own can say which worker does.
        self.keys = KeyServing(config, pipeline, web_address)

    @property
    def shortlabel(self) -> str:
        return f"Pipeline[{self.pipeline_config.name}]"

    @property
    def ready(self) -> bool:
        """Scoring: the model is warm and the group gave this worker its partitions (and re-keying's)."""
        rekeying = self.rekey is None or self.rekey.ready
        return rekeying and self.parts is not None and self.parts.source.joined.is_set()

    @property
    def driver(self) -> Driver[Pipeline] | None:
        return self.parts.driver if self.parts is not None else None

    @property
    def changelog(self) -> Changelog | None:
        """A stateful pipeline's changelog (for serving keys and the metrics)."""
        return self.parts.changelog if self.parts is not None else None

    def assigned_partitions(self) -> int:
        return len(self.parts.source.consumer.assignment()) if self.parts is not None and self.ready else 0

    async def on_start(self) -> None:
        p = self.pipeline_config
        started = time.monotonic()
        # The worker's preflight (app.main) checked the broker and the topics already. The group's
        # decisions come first: they may name another champion than the config's, or no canary.
        self.models = models = ServedModels(self.config, p, by=f"{self.keys.client_id()} on {socket.gethostname()}")
        serving = await models.load(self._model)
        self._model = None  # the runner holds the module now; a swap must be able to free it
        assert models.champion is not None and models.cost is not None
        runner = models.champion
        warm = time.monotonic()
        self.parts = parts = await build_live(
            self.config,
            serving,
            runner,
            models.cost,
            client_id=self.keys.client_id(),
            metrics=self.metrics,
            role_runners=models.role_runners,
            on_rollback=models.canary_rolled_back,
        )
        models.attach(parts.driver)
        self.metrics.probe = parts.driver
        await parts.sink.start()
        if parts.shadow_sink is not None:
            await parts.shadow_sink.start()
        await parts.source.consumer.start()
        settle_garbage_collector()
        self._run_task = asyncio.create_task(parts.driver.run(), name=f"sluice-live-{p.name}")
        self._run_task.add_done_callback(self._on_loop_done)
        self._announce = asyncio.create_task(self._announce_ready(started, warm), name=f"sluice-ready-{p.name}")
        log.info(
            "pipeline %s: scoring %s -> %s with model %s v%s (group %s, budget %.0f ms, batches up to %d, %s)",
            p.name,
            ", ".join(p.input_topics),
            p.output_topic,
            runner.name,
            runner.version,
            p.group_id,
            p.latency_budget_ms,
            p.max_batch_size,
            "exactly once" if p.delivery == "exactly_once" else "at least once",
        )

    async def _announce_ready(self, started: float, warm: float) -> None:
        """Say what the first seconds cost, apart from serving: events that arrive before this line
        wait for the model's warm-up and the group join, not for the batcher."""
        assert self.parts is not None
        await self.parts.source.joined.wait()
        if self.rekey is not None:  # its consumer joins a group of its own
            await self.rekey.joined()
        now = time.monotonic()
        log.info(
            "pipeline %s: ready: %d partition(s) assigned, %.1fs after the worker started (imports, model "
            "loading and start-up checks %.1fs, model warm-up %.1fs, producer and group join %.1fs)",
            self.pipeline_config.name,
            self.assigned_partitions(),
            now - PROCESS_STARTED,
            started - PROCESS_STARTED,
            warm - started,
            now - warm,
        )

    async def key_state(self, key: bytes) -> tuple[int, dict[str, Any]]:
        """``GET /pipelines/NAME/keys/KEY``: (HTTP status, body); see ``app.key_serving``."""
        parts = self.parts
        if parts is None or parts.state is None:
            return 404, {
                "error": f"pipeline {self.pipeline_config.name} has no per-key features, or is not running yet"
            }
        return await self.keys.answer(key, parts.state.step, parts.source.consumer, parts.life.in_phase(Phase.RUNNING))

    async def decide(self, body: Any) -> dict[str, Any]:
        """``POST /pipelines/NAME/model``: promote, roll back or swap for the whole group (see
        ``ServedModels.decide``); what serves afterwards."""
        if self.models is None or self.driver is None:
            raise SwapRejected(503, f"pipeline {self.pipeline_config.name} is not running yet")
        return await self.models.decide(body)

    def serving(self) -> dict[str, Any] | None:
        """``GET /pipelines/NAME/model``: every role's model and the latest decision; None before it runs."""
        return self.models.view() if self.models is not None and self.driver is not None else None

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("pipeline %s stopped on an error: %r", self.pipeline_config.name, task.exception())
            # Crash the worker: its uncommitted batches will be scored again after a restart.
            self._crashing = asyncio.ensure_future(self.crash(task.exception()))  # type: ignore[arg-type]

    async def on_stop(self) -> None:
        if self._announce is not None:
            self._announce.cancel()
        if self.models is not None:
            self.models.stop_following()  # the driver stops next: no model changes under it
        parts = self.parts
        await stop_driver(self.driver, self._run_task, f"pipeline {self.pipeline_config.name}")
        if parts is not None:
            await parts.source.consumer.stop()
            await parts.life.close()  # the driver committed what it finished: let go of every partition
            await parts.sink.stop()
            for shadow in parts.driver.pipeline.shadows:
                try:
                    await asyncio.wait_for(shadow.drain(), SHADOW_STOP_S)  # what they were offered
                except TimeoutError:
                    log.warning(
                        "pipeline %s: shadow %s did not score its last batches within %.0fs of the stop: dropped",
                        self.pipeline_config.name,
                        shadow.name,
                        SHADOW_STOP_S,
                    )
            if parts.shadow_sink is not None:
                await parts.shadow_sink.stop()
        if self.models is not None:
            await self.models.aclose()  # its decisions' clients, and every model it loaded
        if parts is not None and parts.state is not None:
            parts.state.close()
        log.info("pipeline %s stopped", self.pipeline_config.name)
