"""A config file with one pipeline, for the tests and the benchmarks (and anyone scripting sluice).

One writer, so a key renamed in ``app.config`` is renamed here once, not in every test and
benchmark that starts a worker. The features of a demo model come from ``models.registry``.
"""

from __future__ import annotations

from pathlib import Path

from models.registry import DEMO_MODELS

# The per-key features a demo model reads from the stream instead of the event: the
# transformer's history is its account's last 16 transactions, this one included, from state.
DEMO_STATE = {
    "fraud-transformer": """
[pipelines.{pipeline}.state]
ttl_s = 2592000
history_events = 16
[pipelines.{pipeline}.state.features.history]
kind = "last"
n = 16
fields = ["amount", "merchant_risk", "foreign"]
mask = true
include_current = true
""",
}


def demo_inputs(model: str) -> str:
    """The ``features.inputs`` TOML value a demo model takes (its stream features by name)."""
    demo = DEMO_MODELS[model]
    stateful = "history" if model in DEMO_STATE else None
    fields = (
        f'{{ feature = "{name}" }}' if name == stateful else f'{{ field = "{name}", shape = {list(shape)} }}'
        for name, shape in zip(demo.inputs, demo.shapes, strict=True)
    )
    return "[" + ", ".join(fields) + "]"


def demo_state(model: str | None, pipeline: str) -> str:
    """The ``[pipelines.NAME.state]`` tables a demo model needs ("" for one that needs none)."""
    return DEMO_STATE.get(model or "", "").format(pipeline=pipeline)


def write_pipeline_config(
    path: Path,
    *,
    bootstrap: str,
    pipeline: str,
    input_topic: str,
    output_topic: str,
    dead_letter_topic: str,
    app_id: str | None = None,
    partitions: int = 3,
    torch_threads: int = 1,
    demo: str | None = "fraud-mlp",
    model: str | None = None,
    inputs: str | None = None,
    extra: str = "",
    app_extra: str = "",
) -> Path:
    """Write ``path``: an app (id ``app_id``, default "<pipeline>-app") and one pipeline.

    The model is a demo by name, or ``model``: the lines of a ``[pipelines.NAME.model]``
    table; ``inputs`` defaults to what the demo model takes. ``extra`` and ``app_extra`` are
    more lines for the pipeline's and the app's tables.
    """
    model_lines = model if model is not None else f'demo = "{demo}"'
    if inputs is None:
        if demo is None or model is not None:
            raise ValueError("inputs are needed for a model that is not a demo model")
        inputs = demo_inputs(demo)
    path.write_text(
        f"""[app]
id = "{app_id or f"{pipeline}-app"}"
broker = "kafka://{bootstrap}"
create_topics = true
topic_partitions = {partitions}
torch_threads = {torch_threads}
{app_extra}

[pipelines.{pipeline}]
input_topics = ["{input_topic}"]
output_topic = "{output_topic}"
dead_letter_topic = "{dead_letter_topic}"
{extra}

[pipelines.{pipeline}.model]
{model_lines}

[pipelines.{pipeline}.features]
inputs = {inputs}
{demo_state(demo if model is None else None, pipeline)}"""
    )
    return path
