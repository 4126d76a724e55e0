"""sluice's config file: TOML, read once at start-up into frozen dataclasses.

Every command reads the file named by ``--config PATH``, else ``$SLUICE_CONFIG``, else
``config/sluice.toml``. Any mistake fails at start-up with one line naming the file,
the key, the value and what was expected; ``config/sluice.toml`` documents every key.

One module per part of the file: ``loader`` reads it into a ``Config``; ``app_table`` reads
``[app]`` and ``security`` its ``[app.security]`` (TLS, SASL); ``pipeline`` reads each
``[pipelines.NAME]``, with ``model``, ``features``, ``state`` and ``state_topics`` for its
sub-tables and ``delivery`` for its delivery guarantee; ``topic_limits`` checks what must fit
the broker's limits. ``table`` is the TOML table that names the key in every error, and
``pipeline_toml`` writes a one-pipeline file for tests and benchmarks.
"""

from app.config.app_table import AppConfig
from app.config.loader import DEFAULT_PATH, ENV_PATH, Config, load_config, resolve_path
from app.config.pipeline import PipelineConfig
from app.config.security import SecurityConfig
from app.config.state_topics import RekeyConfig, default_changelog
from app.config.topic_limits import dead_letters_too_big, state_too_big

__all__ = [
    "DEFAULT_PATH",
    "ENV_PATH",
    "AppConfig",
    "Config",
    "PipelineConfig",
    "RekeyConfig",
    "SecurityConfig",
    "dead_letters_too_big",
    "default_changelog",
    "load_config",
    "resolve_path",
    "state_too_big",
]
