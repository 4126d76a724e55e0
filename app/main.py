"""The sluice Faust app: ``faust -A app.main worker`` and ``sluice worker`` start the same worker.

Importing this module does no work: it builds the Faust app, reads no file and imports no
torch. The config file (``--config``, ``$SLUICE_CONFIG`` or ``config/sluice.toml``) is read
when a command runs, once: Faust configures the app as every command starts
(``app.finalize()``), and the app's id, broker and web address come from the file then. A bad
config stops the command there, with one line naming the file and the key.

The worker's pipelines, endpoints and start-up checks are set up when the worker starts
(:mod:`app.worker`); each other command registers itself on the app when its module is
imported, which ``sluice`` does for the one command it runs (``app.cli``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any, cast

import faust
from faust.app.base import BootStrategy

from app.cli import COMMAND_MODULES, invoked_command
from app.config import Config, load_config
from streams.errors import exit_on_operator_error


class SluiceBoot(BootStrategy):
    # Pipelines own their consumers (batch API, explicit commits) and producers; Faust's own
    # per-event consumer would only add a rebalance participant, and its producer an idle
    # connection that needs credentials of its own on a secured cluster.
    enable_kafka_consumer = False
    enable_kafka_producer = False


class SluiceApp(faust.App):
    BootStrategy = SluiceBoot

    def worker_init(self) -> None:
        """Faust calls this as any command starts, once the app is configured."""
        super().worker_init()
        # Faust's own command line (``faust -A app.main produce``) looks a command up only after
        # this, and finds it once its module has registered it; for ``sluice`` it is already
        # imported. Only the command that runs is imported (``watch`` needs no torch, ``backfill``
        # does); every one for Faust's help (``faust -A app.main --help``).
        command = invoked_command(sys.argv[1:])
        names = [command] if command in COMMAND_MODULES else list(COMMAND_MODULES) if command is None else []
        for name in names:
            importlib.import_module(COMMAND_MODULES[name])


_loaded: Config | None = None


def sluice_config() -> Config:
    """The config file, read on first use (when a command runs, never at import), once.

    A bad one ends the command with one line, ``sluice <command>: ...``, and exit status 2."""
    global _loaded
    if _loaded is None:
        with exit_on_operator_error(invoked_command(sys.argv[1:])):
            _loaded = load_config()
    return _loaded


class _ReadOnFirstUse:
    """The config as the commands use it (``config.pipelines``, ``config.app``...): the file is
    read when the first of its attributes is asked for, inside a running command."""

    def __getattr__(self, name: str) -> Any:
        return getattr(sluice_config(), name)

    def __repr__(self) -> str:
        return repr(_loaded) if _loaded is not None else "<config: read when a command runs>"


config = cast(Config, _ReadOnFirstUse())


class _FaustSettings(Mapping[str, Any]):
    """The settings of the Faust app that the config file gives, as the app's config source:
    Faust reads them (and so the file) when it configures the app, not when it is built."""

    def _settings(self) -> dict[str, Any]:
        settings = sluice_config().app
        return {"broker": settings.broker, "web_bind": settings.web_bind, "web_port": settings.web_port}

    def __getitem__(self, key: str) -> Any:
        return self._settings()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._settings())

    def __len__(self) -> int:
        return len(self._settings())


# The id is the config's ([app] id); Faust takes one when the app is built, so it is set with
# the rest when the app is configured (_name_the_app).
app = SluiceApp("sluice", config_source=_FaustSettings(), autodiscover=False, store="memory://")


@app.on_configured.connect
def _name_the_app(sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any) -> None:
    settings = args[0]  # Faust's settings being configured: the signal's one argument
    settings.id = sluice_config().app.id


_worker_prepared = False


@app.on_worker_init.connect
def _prepare_worker(sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any) -> None:
    """Before the worker starts: register the pipelines and the endpoints, load every model and
    check the broker and the topics (app.worker), so a mistake is one clear line, not a crash
    from inside the worker later.

    Faust sends this signal as every command starts; other commands (produce, watch, backfill)
    neither serve the pipelines nor should create their topics. Faust's own command
    line sends it twice for one worker (it finds the app twice): the worker is prepared once.
    """
    global _worker_prepared
    if invoked_command(sys.argv[1:]) != "worker" or _worker_prepared:
        return
    _worker_prepared = True
    from app.worker import prepare_worker  # torch and the pipeline services: only the worker needs them

    with exit_on_operator_error("worker"):
        prepare_worker(app, sluice_config())
