"""The sluice Faust app: ``faust -A app.main worker`` and ``sluice worker`` start the same worker.

Importing this module reads the config file once (``--config``, ``$SLUICE_CONFIG`` or
``config/sluice.toml``) and registers one pipeline service per configured pipeline.
A bad config stops here, with one line naming the file and the key.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
from faust.app.base import BootStrategy

from app.cli import invoked_command
from app.config import Config, dead_letters_too_big, load_config
from app.kafka_clients import connection
from app.pipeline_service import PipelineService
from app.topics import ensure_topics, max_message_bytes
from app.web import metrics_registry, register_endpoints
from models.loading import LoadedModel, load_model
from streams.errors import ConfigError, ModelLoadError, exit_on_operator_error
from streams.metrics import PipelineMetrics, SluiceCollector

log = logging.getLogger(__name__)


def _load() -> Config:
    with exit_on_operator_error(invoked_command(sys.argv[1:])):
        loaded = load_config()
    return loaded


class SluiceBoot(BootStrategy):
    # Pipelines own their consumers (batch API, explicit commits) and producers; Faust's own
    # per-event consumer would only add a rebalance participant, and its producer an idle
    # connection that needs credentials of its own on a secured cluster.
    enable_kafka_consumer = False
    enable_kafka_producer = False


class SluiceApp(faust.App):
    BootStrategy = SluiceBoot


config = _load()
app = SluiceApp(
    config.app.id,
    broker=config.app.broker,
    autodiscover=False,
    web_bind=config.app.web_bind,
    web_port=config.app.web_port,
    store="memory://",
)

collector = SluiceCollector()
_services = {
    p.name: PipelineService(config, p, metrics=collector.register(PipelineMetrics(p.name))) for p in config.pipelines
}
for _service in _services.values():
    app.service(_service)  # type: ignore[arg-type]
register_endpoints(app, config, _services, metrics_registry(collector))


def _check_topics() -> None:
    """Reach the broker, make sure every pipeline's topics exist (or are created), and check
    that dead letters fit the dead-letter topics.

    Runs on its own event loop in a helper thread: Faust's loop is not running yet, and
    must not be touched before the worker starts it.
    """
    wanted = [t for s in _services.values() for t in s.pipeline_config.topics]
    conn = connection(config)

    async def check() -> dict[str, int]:
        create, partitions = config.app.create_topics, config.app.topic_partitions
        await ensure_topics(conn, wanted, create=create, partitions=partitions, timeout_s=15.0)
        return await max_message_bytes(conn, wanted)

    with ThreadPoolExecutor(max_workers=1) as pool:
        limits = pool.submit(asyncio.run, check()).result()
    for service in _services.values():
        problem = dead_letters_too_big(service.pipeline_config, limits)
        if problem:
            raise ConfigError(f"{config.path}: {problem}")


@app.on_worker_init.connect
def _preflight(sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any) -> None:
    """Before the worker starts: load every model and check the broker and the topics, so a
    mistake is one clear line, not a crash from inside the worker later.

    Faust sends this signal before any command is parsed; other commands (produce, watch,
    backfill) neither serve the pipelines nor should create their topics.
    """
    if invoked_command(sys.argv[1:]) != "worker":
        return
    with exit_on_operator_error("worker"):
        for name, service in _services.items():
            spec = service.pipeline_config.model
            try:
                loaded: LoadedModel = load_model(spec)
            except ModelLoadError as exc:
                where = f"{config.path}: key 'pipelines.{name}.model' ({spec.describe()})"
                raise ModelLoadError(f"{where}: {exc}") from None
            service._model = loaded
        _check_topics()


# Commands register themselves on the app when imported.
from app.commands import backfill, produce, swap_model, watch  # noqa: E402, F401
