"""``sluice backfill --labels``: every model's scores and the labels, collected as the run scores,
then an evaluation report (``models.evaluation``, ``app.evaluation_report``) once it is done.

The champion's scores are taken from the groups it served (a ``ServedRecorder`` the pipeline
offers each scored group to), each candidate's from its shadow (``Shadow(on_scored=...)``), into
a ``ScoreTable`` by plan position beside the run's checkpoint: numpy arrays, not the outputs
read back. Labels: ``--labels FIELD`` reads each event's field as the champion's groups pass;
``--labels kafka:TOPIC`` keeps a hash of each event's id and reads the labels topic once the
replay is done (the labels that exist then: chargebacks arrive late), joined by id.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from app.backfill_args import Run
from app.evaluation_report import write_report
from app.kafka_clients import Connection
from app.labels import LABEL_RECORD, FieldLabels, TopicLabels, parse_labels
from app.topics import partitions_of
from models.evaluation import Evaluation, evaluate
from streams.backfill.checkpoint import Checkpoint
from streams.backfill.score_table import ScoreTable, labels_by_hash
from streams.codecs.transcoded import json_value
from streams.errors import CommandLineError, TopicMissingError
from streams.flow.scored_groups import OnScored, ServedRecorder
from streams.records import SourceRecord

# A score at or above it is a positive decision: where the report counts decisions that differ.
DECISION_THRESHOLD = 0.5


def scores_folder(checkpoint: Checkpoint) -> Path:
    """Beside the checkpoint ``RUN.partKofN.json``: ``RUN.partKofN.scores/``."""
    return checkpoint.path.with_name(checkpoint.path.stem + ".scores")


def report_stem(run: Run) -> str:
    k, n = run.part
    return "evaluation" if n == 1 else f"evaluation.part{k}of{n}"


async def check_labels_source(conn: Connection, run: Run) -> None:
    """Before the replay: a labels topic that does not exist is said now, not after hours of scoring."""
    source = parse_labels(run.labels) if run.labels else None
    if isinstance(source, TopicLabels) and not await partitions_of(conn, source.topic):
        raise TopicMissingError(
            f"--labels {run.labels}: topic {source.topic} does not exist: write {LABEL_RECORD} records keyed by "
            f"event id to it (the demo's: sluice produce --labels-topic {source.topic})"
        )


class Evidence:
    """Collects every model's scores by plan position, and the labels or the ids they are joined by."""

    def __init__(self, table: ScoreTable, labels: FieldLabels | TopicLabels) -> None:
        self.table = table
        self.labels = labels
        self._champion = table.scores[0]

    def served(self, records: Sequence[SourceRecord], rows: np.ndarray, ids: Sequence[object], p: np.ndarray) -> None:
        slots = self.table.slots(records, rows)
        self._champion[slots] = np.asarray(p).reshape(len(rows), -1)[:, 0]
        if isinstance(self.labels, FieldLabels):
            label_of = self.labels.label_of
            self.table.record_labels(slots, [label_of(json_value(records[i])) for i in rows.tolist()])
        else:
            self.table.record_ids(slots, ids)

    def recorder(self) -> ServedRecorder:
        """What the pipeline offers the champion's groups to."""
        return ServedRecorder(self.served)

    def candidate(self, model: int) -> OnScored:
        """What candidate ``model`` (1, 2, ...) hands its scores to."""
        return self.table.recorder(model)

    async def labels_now(self, conn: Connection) -> np.ndarray:
        """Each slot's label: read as the events passed, or from the labels topic now."""
        if isinstance(self.labels, TopicLabels):
            assert self.table.ids is not None
            table = await self.labels.read(conn)
            return labels_by_hash(table.labels, np.asarray(self.table.ids))
        assert self.table.labels is not None
        return np.asarray(self.table.labels)


@contextmanager
def opened_evidence(run: Run, checkpoint: Checkpoint, models: int) -> Iterator[Evidence | None]:
    """The collector of a run with ``--labels`` (None without), its files beside the checkpoint;
    a resumed run continues the files its first part wrote."""
    if run.labels is None:
        yield None
        return
    source = parse_labels(run.labels)
    field = isinstance(source, FieldLabels)
    table = ScoreTable(scores_folder(checkpoint), checkpoint.plan, models, labels=field, ids=not field)
    table.open(resume=run.checkpoint is not None)
    if not table.kept_earlier:
        print(
            f"report: the scores of the events scored before this resume are not in {table.folder}: the report "
            "covers the events scored from now on",
            file=sys.stderr,
            flush=True,
        )
    try:
        yield Evidence(table, source)
    finally:
        table.close()


def headline(evaluation: Evaluation, written: Sequence[Path]) -> list[str]:
    """Where the report is, and each model's figures, for the run's last lines."""
    e = evaluation
    first = next((p for p in written if p.suffix == ".md"), written[0])
    lines = [
        f"report: {first} ({', '.join(p.suffix for p in written)}): {e.counted:,} of {e.events:,} events counted "
        f"({e.unlabelled:,} without a label, {e.unscored:,} not scored by every model)"
    ]

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    for m in e.models:
        lines.append(
            f"  {m.model}: ROC AUC {num(m.roc_auc)}, PR AUC {num(m.pr_auc)}, log loss {m.log_loss:.4f} "
            f"({m.positives:,} positives)"
        )
    for a in e.agreement:
        lines.append(
            f"  {a.model} against {a.champion}: mean |difference| {a.mean_abs_diff:.4f}, decisions differ at "
            f"{e.threshold:g} on {a.flip_share:.2%} ({a.flips:,} events)"
        )
    return lines


async def write_evaluation(
    evidence: Evidence, conn: Connection, run: Run, model_labels: Sequence[str]
) -> tuple[Evaluation, list[Path]]:
    """Evaluate every model on the events some model scored, and write the report."""
    labels = await evidence.labels_now(conn)
    table = evidence.table
    scored = table.scored()
    scores = {name: np.asarray(table.scores[i])[scored] for i, name in enumerate(model_labels)}
    try:
        evaluation = evaluate(labels[scored], scores, DECISION_THRESHOLD)
    except ValueError as exc:
        raise CommandLineError(f"--labels {run.labels}: no report: {exc}") from None
    title = f"backfill {run.id}: {', '.join(model_labels)} on pipeline {run.pipeline.name}"
    written = write_report(evaluation, run.report_folder, title, stem=report_stem(run))
    return evaluation, written
