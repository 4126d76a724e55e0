"""What ``sluice worker`` sets up as it starts: one pipeline service per configured pipeline,
the web endpoints, and the start-up checks.

``app.main`` calls :func:`prepare_worker` when the worker command starts, never at import:
this module imports torch and the pipeline services, which no other command needs.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import faust

from app.avro_outputs import register_outputs
from app.build import load_checked_model
from app.config import Config, dead_letters_too_big, state_too_big
from app.decision_log import ensure_decisions_topic
from app.kafka_clients import connection
from app.pipeline_service import PipelineService
from app.rekey_service import RekeyService
from app.schema_registry import refuse_in_memory
from app.topics import ensure_changelog, ensure_repartition, ensure_topics, max_message_bytes
from app.web import metrics_registry, register_endpoints
from models.loading import LoadedModel
from streams.errors import ConfigError, ModelLoadError
from streams.metrics import PipelineMetrics, SluiceCollector


def prepare_worker(app: faust.App, config: Config) -> dict[str, PipelineService]:
    """Register the pipelines and the endpoints on ``app``, then check that every model loads
    and that the broker and the topics are there, so a mistake is one clear line (an
    ``OperatorError``), not a crash from inside the worker later."""
    refuse_in_memory(config, "worker")
    if any(p.output_format != "json" for p in config.pipelines):
        refuse_in_memory(config, "worker", "avro")  # its schema registered where no consumer could read it
    models: dict[str, LoadedModel] = {}
    for p in config.pipelines:
        try:
            models[p.name] = load_checked_model(p, p.model)
        except ModelLoadError as exc:
            where = f"{config.path}: key 'pipelines.{p.name}.model'"  # the message names the model
            raise ModelLoadError(f"{where}: {exc}") from None
    collector = SluiceCollector()
    services = {
        p.name: PipelineService(
            config,
            p,
            model=models[p.name],
            metrics=collector.register(PipelineMetrics(p.name)),
            web_address=lambda: web_address(app, config),
            rekey=None
            if p.rekey is None
            else RekeyService(config, p, collector.register(PipelineMetrics(f"{p.name}-rekey"))),
        )
        for p in config.pipelines
    }
    for service in services.values():
        app.service(service)  # type: ignore[arg-type]
    register_endpoints(app, config, services, metrics_registry(collector))
    check_topics(config, services)
    return services


def web_address(app: faust.App, config: Config) -> str:
    """host:port where other workers reach this one's web server (for requests about keys it owns):
    the bound address, or the host's name when bound to every interface."""
    host = config.app.web_bind
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"{host}:{app.conf.web_port}"


def check_topics(config: Config, services: Mapping[str, PipelineService]) -> None:
    """Reach the broker, make sure every pipeline's topics and the model decisions topic exist
    (or are created), check that dead letters fit the dead-letter topics, and register the schema
    of Avro outputs (a registry that refuses it is one line now, not a pipeline failing to start).

    Runs on its own event loop in a helper thread: Faust's loop is not running yet, and
    must not be touched before the worker starts it.
    """
    wanted = [t for s in services.values() for t in s.pipeline_config.topics]
    conn = connection(config)

    async def check() -> dict[str, int]:
        create, partitions = config.app.create_topics, config.app.topic_partitions
        await ensure_topics(conn, wanted, create=create, partitions=partitions, timeout_s=15.0)
        await ensure_decisions_topic(conn, config.app.decisions_topic, create=create, timeout_s=15.0)
        for service in services.values():
            p = service.pipeline_config
            if p.rekey is not None:
                await ensure_repartition(conn, p.rekey.topic, p.rekey.source_topic, create=create, timeout_s=15.0)
            if p.state is not None:
                limit = await ensure_changelog(
                    conn, p.changelog_topic, p.input_topics[0], create=create, timeout_s=15.0
                )
                problem = state_too_big(p, limit)
                if problem:
                    raise ConfigError(f"{config.path}: {problem}")
            await register_outputs(config, p, p.output_topic, emit_features=p.emit_features)
        return await max_message_bytes(conn, wanted)

    with ThreadPoolExecutor(max_workers=1) as pool:
        limits = pool.submit(asyncio.run, check()).result()
    for service in services.values():
        problem = dead_letters_too_big(service.pipeline_config, limits)
        if problem:
            raise ConfigError(f"{config.path}: {problem}")
