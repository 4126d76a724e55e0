"""Each model format the README documents, served end to end the way a user takes it.

The test builds its own model (``tests.integration.user_models``: a user's class, trained on
data the test generates), saves it as the README says for the format, and serves it: by a
live worker on the real broker, by a swap through the worker's endpoint to a second version
of the same format, and by ``sluice backfill -m``. Every prediction equals the eager module's
on the same features. The demo models are served end to end by the rest of the suite.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import torch
from aiokafka import ConsumerRecord

from app.config.pipeline_toml import demo_inputs
from app.demo_events import DemoEvent, demo_events
from app.topics import ensure_topics
from tests.integration.kafka_helpers import (
    free_port,
    produce_raw,
    read_topic,
    run_sluice,
    running_worker,
    topics_for,
    unique,
    write_config,
)
from tests.integration.user_models import FeatureGrid, features_of, save, trained
from tests.one_line import one_line_exit_2

USER_CLASS = "tests.integration.user_models:UserNet"
# (config lines for the model, the swap-model flag, the file suffix) per format.
FORMATS = {
    "exported": ('exported = "{path}"', "--exported", "pt2"),
    "torchscript": ('torchscript = "{path}"\ntrust_torchscript = true', "--torchscript", "ts"),
    "state_dict": (f'class = "{USER_CLASS}"\nstate_dict = "{{path}}"', "--state-dict", "pt"),
}
# Batches of other sizes may take other kernels: float32 results then differ in the last bits.
TOLERANCE = 1e-5


def expected_scores(model: torch.nn.Module, events: list[DemoEvent]) -> dict[str, float]:
    with torch.inference_mode():
        scores = model(features_of(events))[:, 0].tolist()
    return {e.id: s for e, s in zip(events, scores, strict=True)}


def assert_scored_by(bodies: list[dict[str, object]], expected: dict[str, float], version: str | None) -> None:
    mine = {str(b["id"]): b for b in bodies if b["id"] in expected}
    assert mine.keys() == expected.keys(), f"{len(expected) - len(mine)} events not scored"
    for event_id, body in mine.items():
        assert version is None or body["model_version"] == version, body
        assert abs(float(body["prediction"]) - expected[event_id]) <= TOLERANCE, (body, expected[event_id])  # type: ignore[arg-type]


def bodies_of(records: list[ConsumerRecord]) -> list[dict[str, object]]:
    return [orjson.loads(r.value) for r in records]


@pytest.mark.parametrize("kind", sorted(FORMATS))
async def test_a_users_model_is_served_by_a_worker_a_swap_and_a_backfill(kafka, tmp_path, kind):
    lines, swap_flag, suffix = FORMATS[kind]
    models = tmp_path / "models"
    models.mkdir()
    v1, v2 = trained(seed=1), trained(seed=2)
    first_file = save(v1, kind, models / f"fraud-v1.{suffix}")
    second_file = save(v2, kind, models / f"fraud-v2.{suffix}")
    topics = topics_for(unique(f"format-{kind}"))
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline="mine",
        partitions=2,
        model=lines.format(path=first_file) + '\nversion = "1"',
        inputs=demo_inputs("fraud-mlp"),
        extra=f'model_dirs = ["{models}"]',
        **topics,
    )
    before, after = list(demo_events(300, seed=41)), list(demo_events(300, seed=42))
    port, env = free_port(), {"SLUICE_ADMIN_TOKEN": "formats-test-token"}

    with running_worker(config, tmp_path / "worker.log", ready_text="partitions assigned: ", web_port=port, env=env):
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in before])
        served = bodies_of(await read_topic(kafka, topics["output_topic"], expected=len(before)))
        assert_scored_by(served, expected_scores(v1, before), "1")

        swap_model = ("--config", str(config), "swap-model", "--worker", f"http://127.0.0.1:{port}")
        grid = save(FeatureGrid(), "exported", models / "grid.pt2")
        refused = await asyncio.to_thread(run_sluice, *swap_model, "--version", "3", "--exported", str(grid), env=env)
        assert refused.returncode == 1, refused.stderr
        assert "does not fit pipeline mine: model grid returned predictions of shape [1, 2, 16]" in refused.stderr
        swap = await asyncio.to_thread(run_sluice, *swap_model, "--version", "2", swap_flag, str(second_file), env=env)
        assert swap.returncode == 0, swap.stderr
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in after])
        total = len(before) + len(after)
        served = bodies_of(await read_topic(kafka, topics["output_topic"], expected=total, idle=1))
        assert_scored_by(served, expected_scores(v2, after), "2")
        assert len(served) == total, "one prediction per event"

    out = tmp_path / "backfill.jsonl"
    backfill = await asyncio.to_thread(
        run_sluice,
        *("--config", str(config), "backfill", "-m", model_ref(kind, second_file)),
        *("--sink", f"file:{out}", "--state-dir", str(tmp_path / "state")),
    )
    assert backfill.returncode == 0, backfill.stderr
    backfilled = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(backfilled) == total
    assert_scored_by(backfilled, expected_scores(v2, before + after), None)


def model_ref(kind: str, path: Path) -> str:
    """``backfill -m`` for a file of ``kind``."""
    return f"{USER_CLASS}={path}" if kind == "state_dict" else str(path)


async def test_a_model_whose_output_does_not_fit_is_one_line_at_start(kafka, tmp_path):
    grid = save(FeatureGrid(), "exported", tmp_path / "grid.pt2")
    topics = topics_for(unique("format-grid"))
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline="mine",
        model=f'exported = "{grid}"',
        inputs=demo_inputs("fraud-mlp"),
        **topics,
    )
    why = f"exported program {grid} does not fit pipeline mine: model grid returned predictions of shape [1, 2, 16]"
    worker = await asyncio.to_thread(run_sluice, "--config", str(config), "--datadir", str(tmp_path / "d"), "worker")
    assert why in one_line_exit_2(worker)
    await ensure_topics(kafka, list(topics.values()), create=True, partitions=1)  # the worker stopped before it could
    await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in demo_events(3, seed=43)])
    backfill = await asyncio.to_thread(
        run_sluice,
        *("--config", str(config), "backfill", "-m", str(grid), "--sink", f"file:{tmp_path / 'o.jsonl'}"),
    )
    assert why in one_line_exit_2(backfill)
