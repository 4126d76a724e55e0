"""The loader: finds the config file, parses its TOML and builds the frozen ``Config`` from its tables.

Every command reads the file named by ``--config PATH``, else ``$SLUICE_CONFIG``, else
``config/sluice.toml``: an ``[app]`` table and one ``[pipelines.NAME]`` table per pipeline.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.config.app_table import AppConfig, load_app
from app.config.pipeline import PipelineConfig, load_pipeline
from app.config.state_topics import check_rekeyed_names
from app.config.table import Table
from streams.errors import ConfigError

DEFAULT_PATH = Path("config/sluice.toml")
ENV_PATH = "SLUICE_CONFIG"


@dataclass(frozen=True)
class Config:
    path: Path
    app: AppConfig
    pipelines: tuple[PipelineConfig, ...]

    def pipeline(self, name: str) -> PipelineConfig:
        for p in self.pipelines:
            if p.name == name:
                return p
        raise ConfigError(f"{self.path}: no pipeline named {name!r}; pipelines: {[p.name for p in self.pipelines]}")

    @property
    def bootstrap_servers(self) -> str:
        """The broker URL without Faust's ``kafka://`` scheme, as aiokafka wants it."""
        return ",".join(part.split("://", 1)[-1] for part in self.app.broker.split(","))


def resolve_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get(ENV_PATH) or DEFAULT_PATH)


def load_config(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    path = resolve_path(explicit)
    env = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (set --config PATH or ${ENV_PATH})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    root = Table(path, "", raw)
    app = load_app(root.table("app", default={}), env, path.parent)
    pipelines_table = root.table("pipelines", default={})
    pipelines = tuple(
        load_pipeline(pipelines_table.table(name), name, path.parent, app.id) for name in list(pipelines_table.data)
    )
    pipelines_table.done()
    if not pipelines:
        raise ConfigError(f"{path}: key 'pipelines' has no pipeline: expected at least one [pipelines.NAME] table")
    check_rekeyed_names(path, pipelines)
    check_formats(path, app, pipelines)
    check_output_formats(path, app, pipelines)
    root.done()
    return Config(path=path, app=app, pipelines=pipelines)


def check_formats(path: Path, app: AppConfig, pipelines: Sequence[PipelineConfig]) -> None:
    """A pipeline reading a registry's wire format needs the registry."""
    for p in pipelines:
        if p.format == "json":
            continue
        if app.schema_registry is None:
            raise ConfigError(
                f'{path}: pipeline {p.name} reads format = "{p.format}", which needs the schema registry: '
                "add an [app.schema_registry] table with its url"
            )


def check_output_formats(path: Path, app: AppConfig, pipelines: Sequence[PipelineConfig]) -> None:
    """Predictions written as Avro need the registry their schema is registered with."""
    for p in pipelines:
        if p.output_format != "json" and app.schema_registry is None:
            raise ConfigError(
                f"{path}: key 'pipelines.{p.name}.output_format' is \"{p.output_format}\", which needs the schema "
                "registry: add an [app.schema_registry] table with its url"
            )
