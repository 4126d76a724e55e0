"""The worker's HTTP endpoints, on Faust's web server (127.0.0.1:6066 unless configured).

- ``GET /metrics``: Prometheus text format, every pipeline's metrics plus the process's.
- ``GET /pipelines/NAME/model``: the model being served, every role's (champion, canary with its
  share, fallback, shadows, the champion's circuit) and the latest decision.
- ``POST /pipelines/NAME/model``: swap in another model, promote the canary or a shadow, or roll
  the canary back, for every worker of the group (``app.model_requests``, ``app.served_models``;
  ``Authorization: Bearer TOKEN``, the token from the environment variable
  ``app.admin_token_env`` names; disabled when that variable is unset).
- ``GET /pipelines/NAME/keys/KEY``: a key's per-key features and last prediction, from the
  worker that owns its partition; another worker answers 307 with the owner's address.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import faust
import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from app.config import Config
from app.pipeline_service import PipelineService
from streams.errors import ModelLoadError, SwapRejected
from streams.metrics import SluiceCollector

log = logging.getLogger(__name__)


def metrics_registry(collector: SluiceCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def authorized(headers: Mapping[str, str], token: str | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>``; any malformed header is a no."""
    if not token:
        return False
    given = headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        # aiohttp hands undecodable header bytes over as lone surrogates (surrogateescape):
        # encoding them back gives the bytes that were sent, and anything else is not a token.
        presented = value.strip().encode("utf-8", "surrogateescape")
    except UnicodeError:
        return False
    # os.environ decodes with surrogateescape too: the token's own bytes, whatever they are.
    return hmac.compare_digest(presented, token.encode("utf-8", "surrogateescape"))


class ThrottledWarning:
    """At most one WARNING per ``every_s`` seconds; the next one says how many were held back.

    Anyone who can reach the port can send wrong tokens as fast as they like: each deserves
    a count, not a log line.
    """

    def __init__(
        self, logger: logging.Logger, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger, self.every_s, self.clock = logger, every_s, clock
        self.last: float | None = None
        self.held_back = 0

    def warning(self, message: str, *args: object) -> bool:
        """Log ``message`` unless one was logged less than ``every_s`` ago; True when logged."""
        now = self.clock()
        if self.last is not None and now - self.last < self.every_s:
            self.held_back += 1
            return False
        if self.held_back:
            message += " (and %d more in the last %.0fs, not logged)"
            args = (*args, self.held_back, now - self.last if self.last is not None else 0.0)
        self.logger.warning(message, *args)
        self.last, self.held_back = now, 0
        return True


def register_endpoints(
    app: faust.App, config: Config, services: Mapping[str, PipelineService], registry: CollectorRegistry
) -> None:
    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/ready")
    class Ready(View):
        """200 once every pipeline scores (model warm, partitions assigned), else 503: a readiness
        probe, and what a load generator waits for before it starts."""

        async def get(self, request: Request) -> Response:
            pipelines = {
                name: {"ready": s.ready, "partitions": s.assigned_partitions()} for name, s in services.items()
            }
            ready = all(p["ready"] for p in pipelines.values())
            return self.json({"ready": ready, "pipelines": pipelines}, status=200 if ready else 503)

    refused = ThrottledWarning(log)

    @app.page("/pipelines/{pipeline}/keys/{key}")
    class Key(View):
        async def get(self, request: Request, pipeline: str, key: str) -> Response:
            service = services.get(pipeline)
            if service is None:
                return self.error(404, f"no pipeline {pipeline!r}; pipelines: {sorted(services)}")
            # The key's bytes as sent (percent-encoded in the path), whether or not they are UTF-8.
            raw = urllib.parse.unquote_to_bytes(request.url.raw_path.rsplit("/", 1)[-1])
            status, body = await service.key_state(raw)
            if status == 307:
                location = f"http://{body['owner']}{request.url.raw_path}"
                return self.json(body, status=307, headers={"Location": location})
            return self.json(body, status=status)

    @app.page("/pipelines/{pipeline}/model")
    class Model(View):
        async def get(self, request: Request, pipeline: str) -> Response:
            service = services.get(pipeline)
            serving = service.serving() if service is not None else None
            if serving is None:
                return self.error(404, f"no running pipeline {pipeline!r}; pipelines: {sorted(services)}")
            return self.json(serving)

        async def post(self, request: Request, pipeline: str) -> Response:
            env = config.app.admin_token_env
            token = os.environ.get(env)
            if not token:
                return self.error(403, f"model changes over HTTP are disabled: set ${env} on the worker to enable them")
            if not authorized(request.headers, token):
                # Faust's Request type does not declare the peer; aiohttp's request, which it is, does.
                refused.warning(
                    "model swap refused from %s: missing, malformed or wrong token", getattr(request, "remote", "?")
                )
                return self.error(401, "missing or wrong token: send 'Authorization: Bearer <token>'")
            service = services.get(pipeline)
            if service is None:
                return self.error(404, f"no pipeline {pipeline!r}; pipelines: {sorted(services)}")
            try:
                body: Any = orjson.loads(await request.read())
            except orjson.JSONDecodeError as exc:
                return self.error(400, f"the body is not JSON: {exc}")
            try:
                log.info("pipeline %s: model change asked: %s", pipeline, _shown(body))
                serving = await service.decide(body)
            except SwapRejected as exc:
                log.warning("pipeline %s: model change refused: %s", pipeline, exc)
                return self.error(exc.status, str(exc))
            except ModelLoadError as exc:
                log.warning("pipeline %s: model change failed, the old model keeps serving: %s", pipeline, exc)
                return self.error(422, f"not swapped, the old model keeps serving: {exc}")
            except Exception as exc:
                # Loading user files can fail in ways no list of exceptions foresees; the worker serves on.
                log.exception("pipeline %s: model change failed, the old model keeps serving", pipeline)
                return self.error(500, f"not swapped, the old model keeps serving: {type(exc).__name__}: {exc}")
            return self.json(serving)


def _shown(body: Any) -> str:
    """A request body for the log: short, whatever was sent."""
    try:
        text = orjson.dumps(body).decode()
    except (orjson.JSONEncodeError, RecursionError):
        text = f"a JSON {type(body).__name__} orjson does not write back"
    return text if len(text) <= 300 else text[:297] + "..."
