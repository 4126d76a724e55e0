"""``sluice backfill --models A,B --labels ... --report DIR`` on the real broker, as a user runs it:
every event scored by every model in one pass (the champion's outputs to the backfill topic, the
candidate's to TOPIC-shadow), and a report whose ROC AUC for each model is the one computed here,
independently, from those outputs read back and the labels the demo produced. The demo's point
holds on the same events: the transformer beats the MLP. And a run killed after a checkpoint
resumes with the same models, every position once in both files, and a report on every event."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from app.demo_events import demo_events
from app.evaluation_report import plotting_available
from tests.integration.kafka_helpers import read_topic, run_sluice, topics_for, unique, write_config

MODELS = ("fraud-mlp", "fraud-transformer")
# Enough events for the two AUCs to stand apart: ~1,600 frauds; the README's held-out figures are
# 0.799 and 0.869, and their standard errors here about 0.006.
EVENTS = 20_000


def pairwise_auc(scored: Iterable[tuple[float, float]]) -> float:
    """P(a positive scores above a negative), ties one half: each positive counted against the
    sorted negatives by binary search (the report ranks all events instead)."""
    pairs = list(scored)
    negatives = np.sort(np.array([s for s, label in pairs if label == 0]))
    positives = np.array([s for s, label in pairs if label == 1])
    below = np.searchsorted(negatives, positives, side="left")
    tied = np.searchsorted(negatives, positives, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(positives) * len(negatives)))


def by_position(records: list[Any]) -> dict[tuple[int, int], dict[str, Any]]:
    """Each output by its source position; a position written twice fails the test."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for record in records:
        body = orjson.loads(record.value) if hasattr(record, "value") else record
        position = (body["source"]["partition"], body["source"]["offset"])
        assert position not in out, f"position {position} written twice"
        out[position] = body
    return out


def auc_of(outputs: Mapping[tuple[int, int], dict[str, Any]], labels: Mapping[str, float]) -> float:
    return pairwise_auc((o["prediction"], labels[o["id"]]) for o in outputs.values())


def produce(config: Path, labels_topic: str, count: int, seed: int) -> dict[str, float]:
    made = run_sluice(
        "--config", str(config), "produce", "-n", str(count), "--seed", str(seed), "--labels-topic", labels_topic
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return {e.id: e.label for e in demo_events(count, seed=seed)}


async def test_every_event_is_scored_by_every_model_and_the_report_matches_an_independent_auc(kafka, tmp_path):
    topics = topics_for(unique("bfmodels"))
    config = write_config(tmp_path, bootstrap=kafka, pipeline="bm", partitions=3, demo="fraud-transformer", **topics)
    labels_topic, out = unique("bfmodels-labels"), unique("bfmodels-scores")
    labels = produce(config, labels_topic, EVENTS, seed=5)
    report = tmp_path / "report"
    result = run_sluice(
        "--config", str(config), "backfill", "--models", ",".join(MODELS), "--labels", f"kafka:{labels_topic}",
        "--report", str(report), "--sink", f"kafka:{out}", "--state-dir", str(tmp_path / "state"), "--run-id", "m1",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert f"-> kafka:{out} (other models -> kafka:{out}-shadow)" in lines[0]

    served = by_position(await read_topic(kafka, out, expected=EVENTS))
    shadowed = by_position(await read_topic(kafka, f"{out}-shadow", expected=EVENTS))
    assert len(served) == len(shadowed) == EVENTS and served.keys() == shadowed.keys(), "every event, once each"
    assert {(o["model"], o["model_version"]) for o in served.values()} == {("fraud-mlp", "2")}
    assert {(o["model"], o["model_version"], o["shadow"]) for o in shadowed.values()} == {
        ("fraud-transformer", "2", True)
    }
    for position, shadow in shadowed.items():  # the very batches the champion scored: its score beside
        assert shadow["id"] == served[position]["id"]
        assert shadow["served"] == {
            "model": "fraud-mlp",
            "model_version": "2",
            "prediction": served[position]["prediction"],
        }

    files = {p.name for p in report.iterdir()}
    assert {"evaluation.md", "evaluation.json"} <= files
    assert ("evaluation.png" in files) == plotting_available()
    data = json.loads((report / "evaluation.json").read_text())
    assert data["events"] == {"total": EVENTS, "counted": EVENTS, "unlabelled": 0, "unscored": 0}
    assert data["champion"] == "fraud-mlp v2"
    reported = {m["model"]: m["roc_auc"] for m in data["models"]}
    mlp, transformer = auc_of(served, labels), auc_of(shadowed, labels)
    assert reported == {
        "fraud-mlp v2": pytest.approx(mlp, abs=1e-6),  # the report rounds to a millionth
        "fraud-transformer v2": pytest.approx(transformer, abs=1e-6),
    }
    assert transformer > mlp + 0.03, f"the demo's point: the transformer ({transformer}) beats the MLP ({mlp})"
    assert f"report: {report.resolve()}/evaluation.md" in result.stderr
    assert f"  fraud-mlp v2: ROC AUC {mlp:.4f}" in result.stderr
    assert f"  fraud-transformer v2: ROC AUC {transformer:.4f}" in result.stderr
    assert lines[-1].startswith(f"backfill done: {EVENTS} events, {EVENTS} predictions")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_a_models_run_killed_after_a_checkpoint_resumes_with_the_same_models_and_reports_on_every_event(
    kafka, tmp_path
):
    topics = topics_for(unique("bfmresume"))
    # Small batches: the crash hook checkpoints after each one, and stops the run long before its end.
    config = write_config(
        tmp_path, bootstrap=kafka, pipeline="br", partitions=2, demo="fraud-transformer",
        extra="max_batch_size = 100", **topics,
    )  # fmt: skip
    labels_topic, count = unique("bfmresume-labels"), 3_000
    labels = produce(config, labels_topic, count, seed=8)
    out, state, report = tmp_path / "scores.jsonl", tmp_path / "state", tmp_path / "report"
    args = (
        "--config", str(config), "backfill", "--sink", f"file:{out}", "--state-dir", str(state),
        "--report", str(report),
    )  # fmt: skip
    models = ("--models", ",".join(MODELS), "--labels", f"kafka:{labels_topic}")

    killed = run_sluice(*args, *models, "--run-id", "r1", env={"SLUICE_TEST_CRASH_AFTER_CHECKPOINTS": "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoint = json.loads((state / "r1.part1of1.json").read_text())
    assert checkpoint["run"]["models"] == list(MODELS) and not checkpoint["done"]
    assert set(checkpoint["shadow_sink"]["lengths"]) == {"scores-shadow.jsonl", "scores-shadow.dead-letters.jsonl"}

    other = run_sluice(*args, "--resume", "r1", "--models", "fraud-transformer,fraud-mlp")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        "sluice backfill: --models 'fraud-transformer,fraud-mlp': run r1 was started with "
        "'fraud-mlp,fraud-transformer', and --resume continues it as it started: drop --models"
    ]

    resumed = run_sluice(*args, "--resume", "r1", timeout=300)  # the models and labels are the checkpoint's
    assert resumed.returncode == 0, resumed.stderr
    served = by_position(read_jsonl(out))
    shadowed = by_position(read_jsonl(tmp_path / "scores-shadow.jsonl"))
    assert len(served) == count and served.keys() == shadowed.keys(), "every position once, in both files"
    assert {o["model"] for o in shadowed.values()} == {"fraud-transformer"}
    data = json.loads((report / "evaluation.json").read_text())
    assert data["events"]["counted"] == count, "the scores from before the kill were kept for the report"
    reported = {m["model"]: m["roc_auc"] for m in data["models"]}
    assert reported == {
        "fraud-mlp v2": pytest.approx(auc_of(served, labels), abs=1e-6),
        "fraud-transformer v2": pytest.approx(auc_of(shadowed, labels), abs=1e-6),
    }
