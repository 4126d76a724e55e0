"""The sluice Faust app: ``faust -A app.main worker`` and ``sluice worker`` start the same worker.

Importing this module reads the config file once (``--config``, ``$SLUICE_CONFIG`` or
``config/sluice.toml``) and registers one pipeline service per configured pipeline.
A bad config stops here, with one line naming the file and the key.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import faust
from faust.app.base import BootStrategy

from app.config import Config, ConfigError, load_config
from app.pipeline_service import PipelineService
from models.loading import LoadedModel, load_model
from models.protocol import ModelLoadError

log = logging.getLogger(__name__)


def _fail(message: str) -> None:
    print(f"sluice: {message}", file=sys.stderr)
    raise SystemExit(2)


def _load() -> Config:
    try:
        return load_config()
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


class SluiceBoot(BootStrategy):
    # Pipelines own their consumers (batch API, explicit commits); Faust's own
    # per-event consumer and its group would only add a rebalance participant.
    enable_kafka_consumer = False


class SluiceApp(faust.App):
    BootStrategy = SluiceBoot


config = _load()
app = SluiceApp(
    config.app.id,
    broker=config.app.broker,
    autodiscover=False,
    web_bind="127.0.0.1",
    store="memory://",
)

_services = {p.name: PipelineService(config, p) for p in config.pipelines}
for _service in _services.values():
    app.service(_service)  # type: ignore[arg-type]


@app.on_worker_init.connect
def _preflight(sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any) -> None:
    """Load every model before the worker starts, so a bad model is a clear error, not a crash later."""
    for name, service in _services.items():
        spec = service.pipeline_config.model
        try:
            loaded: LoadedModel = load_model(spec)
        except ModelLoadError as exc:
            _fail(f"{config.path}: key 'pipelines.{name}.model' ({spec.describe()}): {exc}")
        service._model = loaded


# Commands register themselves on the app when imported.
from app.commands import produce, watch  # noqa: E402, F401
