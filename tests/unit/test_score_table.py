"""The scores a backfill keeps for its report (``streams.backfill.score_table``) and the collector
that fills them (``app.backfill_report.Evidence``): by plan position whatever order the models
score in, labels read from the event or joined by id hash, kept across a resume, in files
beside the checkpoint that are never a link."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from app.backfill_report import Evidence, headline
from app.labels import FieldLabels, TopicLabels
from models.evaluation import evaluate
from streams.backfill.replay_plan import ReplayPlan
from streams.backfill.score_table import MAX_SLOTS, NO_HASH, ScoreTable, id_hash, labels_by_hash
from streams.errors import CheckpointError
from streams.records import InputRecord, Partition

# Partition 0 covers offsets 5..8, partition 1 offsets 0..2: seven slots.
PLAN = ReplayPlan(
    {Partition("t", 0): 5, Partition("t", 1): 0},
    {Partition("t", 0): 9, Partition("t", 1): 3},
)


def record(partition: int, offset: int, label: object = None) -> InputRecord:
    event = {"id": f"e{partition}-{offset}"} | ({} if label is None else {"fraud": label})
    return InputRecord("t", partition, offset, 0, b"k", orjson.dumps(event))


def table(tmp_path: Path, *, models: int = 2, labels: bool = False, ids: bool = True, resume: bool = False):
    return ScoreTable(tmp_path / "r1.part1of1.scores", PLAN, models, labels=labels, ids=ids).open(resume=resume)


def test_scores_land_at_their_events_slot_whatever_order_the_models_score_in(tmp_path):
    scores = table(tmp_path)
    batch = [record(1, 2), record(0, 5), record(0, 8), record(1, 0)]
    assert scores.slots(batch, np.array([0, 1, 2, 3])).tolist() == [6, 0, 3, 4]
    # The candidate scores the second half first, and only some rows of it.
    scores.recorder(1)(batch, np.array([2, 3]), ["e0-8", "e1-0"], np.array([[0.8], [0.1]], dtype=np.float32))
    scores.recorder(0)(batch, np.array([0, 1, 2]), ["e1-2", "e0-5", "e0-8"], np.array([0.3, 0.4, 0.5]))
    first, second = np.asarray(scores.scores[0]), np.asarray(scores.scores[1])
    assert np.isnan(first[[1, 2, 4, 5]]).all() and first[[0, 3, 6]].tolist() == pytest.approx([0.4, 0.5, 0.3])
    assert second[[3, 4]].tolist() == pytest.approx([0.8, 0.1]) and np.isnan(second[[0, 1, 2, 5, 6]]).all()
    assert scores.scored().tolist() == [True, False, False, True, True, False, True]
    scores.close()


def test_labels_join_the_events_by_the_hash_of_their_id_as_text():
    hashes = np.array([id_hash("a"), id_hash(42), NO_HASH, id_hash("missing")], dtype=np.int64)
    labels = labels_by_hash({"a": 1.0, "42": 0.0, "b": 1.0}, hashes)
    assert labels[:2].tolist() == [1.0, 0.0] and np.isnan(labels[2:]).all()
    assert np.isnan(labels_by_hash({}, hashes)).all()
    assert id_hash("a") != 0 and id_hash(42) == id_hash("42")


def test_a_resumed_run_keeps_what_was_scored_before_and_says_when_it_cannot(tmp_path):
    before = table(tmp_path)
    before.recorder(0)([record(0, 6)], np.array([0]), ["e0-6"], np.array([0.25]))
    before.record_ids(np.array([1]), ["e0-6"])
    before.close()
    after = table(tmp_path, resume=True)
    assert after.kept_earlier and float(after.scores[0][1]) == 0.25 and int(after.ids[1]) == id_hash("e0-6")
    after.close()
    (tmp_path / "r1.part1of1.scores" / "model-1.npy").unlink()
    again = table(tmp_path, resume=True)
    assert not again.kept_earlier and not again.scored().any(), "made anew, all of them: no mix of runs"
    again.close()
    fresh = table(tmp_path)  # a new run of the same id never reads what an earlier one left
    assert fresh.kept_earlier and not fresh.scored().any()


def test_a_link_planted_among_the_scores_is_refused_and_not_followed(tmp_path):
    folder = tmp_path / "r1.part1of1.scores"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (folder / "model-0.npy").symlink_to(victim)
    with pytest.raises(
        CheckpointError, match=r"model-0\.npy is not a regular file a run wrote \(a link\?\): remove it"
    ):
        table(tmp_path)
    assert victim.read_bytes() == b"precious"


def test_a_plan_too_large_to_keep_scores_of_is_refused_with_what_to_do(tmp_path):
    huge = ReplayPlan({Partition("t", 0): 0}, {Partition("t", 0): MAX_SLOTS + 1})
    with pytest.raises(CheckpointError, match="split the run with --part K/N"):
        ScoreTable(tmp_path / "s", huge, 2, labels=False, ids=True)


def test_an_empty_plan_keeps_no_files(tmp_path):
    empty = ScoreTable(tmp_path / "s", ReplayPlan({}, {}), 2, labels=False, ids=True).open(resume=True)
    assert empty.kept_earlier and empty.scored().tolist() == [] and list((tmp_path / "s").iterdir()) == []


def test_the_collector_reads_field_labels_as_the_champions_groups_pass(tmp_path):
    scores = table(tmp_path, labels=True, ids=False)
    evidence = Evidence(scores, FieldLabels("fraud"))
    batch = [record(0, 5, 1), record(0, 6, 0), record(0, 7), record(1, 0, True)]
    rows = np.array([0, 1, 2, 3])
    evidence.served(batch, rows, [f"e{i}" for i in range(4)], np.array([0.9, 0.2, 0.5, 0.7]))
    evidence.candidate(1)(batch, rows[:2], ["e0", "e1"], np.array([0.6, 0.1]))
    labels = np.asarray(scores.labels)
    assert labels[[0, 1, 4]].tolist() == [1.0, 0.0, 1.0] and np.isnan(labels[[2, 3, 5, 6]]).all()


def test_the_collector_keeps_id_hashes_for_a_labels_topic(tmp_path):
    scores = table(tmp_path)
    evidence = Evidence(scores, TopicLabels("labels"))
    evidence.served([record(1, 1)], np.array([0]), ["tx-9"], np.array([0.5]))
    assert int(scores.ids[5]) == id_hash("tx-9") and np.isnan(scores.scores[1][5])


def test_the_headline_says_where_the_report_is_and_each_models_figures():
    labels = np.array([0, 1, 0, 1, np.nan])
    evaluation = evaluate(
        labels,
        {"mlp v2": np.array([0.1, 0.9, 0.6, 0.4, 0.5]), "tf v2": np.array([0.1, 0.8, 0.2, 0.7, 0.5])},
    )
    lines = headline(evaluation, [Path("/r/evaluation.png"), Path("/r/evaluation.md"), Path("/r/evaluation.json")])
    assert lines == [
        "report: /r/evaluation.md (.png, .md, .json): 4 of 5 events counted (1 without a label, 0 not scored by "
        "every model)",
        "  mlp v2: ROC AUC 0.7500, PR AUC 0.8333, log loss 0.5108 (2 positives)",
        "  tf v2: ROC AUC 1.0000, PR AUC 1.0000, log loss 0.2271 (2 positives)",
        "  tf v2 against mlp v2: mean |difference| 0.2000, decisions differ at 0.5 on 50.00% (2 events)",
    ]
