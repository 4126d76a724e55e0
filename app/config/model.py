"""``[pipelines.NAME.model]``: which model a pipeline serves, and where a model swap may load from.

Exactly one of ``demo``, ``exported``, ``torchscript`` or ``class``; relative paths are
relative to the config file, wherever the command runs from.
"""

from __future__ import annotations

from pathlib import Path

from app.config.table import Table
from models.spec import WEIGHTS_DIR, ModelSpec
from streams.errors import ConfigError


def load_model(t: Table, base: Path) -> ModelSpec:
    """The ``[pipelines.NAME.model]`` table ``t``; ``base`` is the config file's folder."""
    chosen = [k for k in ("demo", "exported", "torchscript", "class") if k in t.data]
    if len(chosen) != 1:
        raise ConfigError(
            f"{t.path}: table '{t.prefix}' must set exactly one of 'demo', 'exported', 'torchscript' "
            f"or 'class' (found {chosen or 'none'})"
        )

    def file(name: str) -> Path | None:
        # Relative paths are relative to the config file, wherever the command runs from.
        value = t.text(name, None)
        return None if value is None else (base / value if not Path(value).is_absolute() else Path(value))

    spec = ModelSpec(
        demo=t.text("demo", None),
        exported=file("exported"),
        torchscript=file("torchscript"),
        module_class=t.text("class", None),
        state_dict=file("state_dict"),
        init_args=dict(t.get("init_args", dict, "a table of constructor arguments", {})),
        name=t.text("name", None),
        version=t.text("version", None),
        # TorchScript files are programs: the operator says so here, per model, or they are refused.
        # It also lets a model swap on this pipeline load TorchScript from model_dirs.
        trust_torchscript=t.flag("trust_torchscript", False),
    )
    if spec.module_class and spec.state_dict is None:
        raise ConfigError(f"{t.path}: key '{t.key('state_dict')}' is missing: expected the weights file for the class")
    t.done()
    return spec


def default_model_dirs(spec: ModelSpec) -> list[Path]:
    """Where a model swap may load from when the config does not say: next to the configured model."""
    configured = spec.exported or spec.torchscript or spec.state_dict
    return [configured.parent] if configured is not None else [WEIGHTS_DIR]
