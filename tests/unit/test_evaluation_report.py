"""The evaluation report's files: JSON that reads back to the same numbers, Markdown that shows
them, a plot when matplotlib is there and a word on how to get one when it is not, and nothing
written outside the folder given."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pytest

from app.evaluation_report import evaluation_from_json, report_json, write_report
from models.evaluation import Evaluation, evaluate
from streams.errors import CommandLineError


@pytest.fixture
def evaluation() -> Evaluation:
    rng = np.random.default_rng(3)
    n = 2_000
    labels = (rng.random(n) < 0.1).astype(float)
    mlp = np.clip(0.2 * labels + rng.random(n) * 0.8, 0, 1)
    transformer = np.clip(0.5 * labels + rng.random(n) * 0.5, 0, 1)
    labels[:7] = np.nan  # unlabelled
    transformer[10:13] = np.nan  # not scored by one model
    return evaluate(labels, {"fraud-mlp v2": mlp, "fraud|transformer v1": transformer})


def numbers_close(a: object, b: object) -> bool:
    """``a`` and ``b`` alike, their floats within the report's rounding."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(numbers_close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(numbers_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float | int):
        return abs(a - b) <= 5e-7
    return a == b


def test_the_json_reads_back_to_the_same_numbers(evaluation, tmp_path):
    paths = write_report(evaluation, tmp_path, "mlp vs transformer")
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert tmp_path.resolve() / "evaluation.json" in paths
    again = evaluation_from_json(written)
    assert numbers_close(dataclasses.asdict(again), dataclasses.asdict(evaluation))
    assert written == json.loads(json.dumps(report_json(again, "mlp vs transformer")))  # stable
    assert written["title"] == "mlp vs transformer" and written["champion"] == "fraud-mlp v2"
    assert written["events"] == {"total": 2000, "counted": 1990, "unlabelled": 7, "unscored": 3}
    assert list(written["models"][0]) == [
        "model",
        "events",
        "positives",
        "roc_auc",
        "pr_auc",
        "log_loss",
        "note",
        "calibration",
        "distribution",
        "roc_curve",
    ]
    assert list(written["models"][0]["distribution"]["quantiles"]) == ["p1", "p5", "p25", "p50", "p75", "p95", "p99"]


def test_the_markdown_shows_each_models_aucs_calibration_agreement_and_what_was_left_out(evaluation, tmp_path):
    write_report(evaluation, tmp_path, "Transformer against the MLP")
    text = (tmp_path / "evaluation.md").read_text()
    mlp, transformer = evaluation.models
    assert text.startswith("# Transformer against the MLP\n")
    assert transformer.roc_auc is not None and transformer.roc_auc > mlp.roc_auc  # type: ignore[operator]
    for m in evaluation.models:
        assert f"{m.roc_auc:.4f}" in text and f"{m.pr_auc:.4f}" in text and f"{m.log_loss:.4f}" in text
    assert "| fraud-mlp v2 (champion) |" in text
    assert "| fraud\\|transformer v1 |" in text, "a | in a model's name would split the table's cell"
    assert "1,990 of 2,000 events counted" in text and "7 with no label" in text and "3 with a label" in text
    assert "fraud\\|transformer v1: 3" in text
    agreement = evaluation.agreement[0]
    assert f"flips for {agreement.flip_share:.2%} of events ({agreement.flips:,} of 1,990)" in text
    assert text.count("| decile | events |") == 2
    assert "![ROC and calibration curves](evaluation.png)" in text


def test_the_plot_is_a_png_when_matplotlib_is_installed(evaluation, tmp_path):
    paths = write_report(evaluation, tmp_path / "new" / "folder", "t")
    png = tmp_path / "new" / "folder" / "evaluation.png"
    assert png.resolve() in paths
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 10_000


def test_without_matplotlib_the_markdown_and_json_are_written_and_say_how_to_get_the_plot(
    evaluation, tmp_path, monkeypatch
):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it now raises ImportError
    paths = write_report(evaluation, tmp_path, "t")
    assert sorted(p.name for p in paths) == ["evaluation.json", "evaluation.md"]
    assert not (tmp_path / "evaluation.png").exists()
    assert "The plot needs matplotlib: `pip install matplotlib`" in (tmp_path / "evaluation.md").read_text()


def test_one_class_labels_say_why_there_is_no_auc(tmp_path):
    evaluation = evaluate(np.zeros(20), {"m": np.linspace(0, 1, 20)})
    write_report(evaluation, tmp_path, "t")
    text = (tmp_path / "evaluation.md").read_text()
    assert "| n/a | n/a |" in text and "ROC AUC needs both classes" in text
    assert json.loads((tmp_path / "evaluation.json").read_text())["models"][0]["roc_auc"] is None


@pytest.mark.parametrize("stem", ["../evaluation", "/tmp/x", "a/b", "..", ".hidden", ""])
def test_a_report_name_that_is_not_a_plain_file_name_is_refused(evaluation, tmp_path, stem):
    with pytest.raises(CommandLineError, match="expected a plain file name"):
        write_report(evaluation, tmp_path / "reports", "t", stem=stem)
    assert list(tmp_path.iterdir()) == []


def test_a_link_in_the_folder_is_never_written_through(evaluation, tmp_path):
    folder, elsewhere = tmp_path / "reports", tmp_path / "precious.md"
    folder.mkdir()
    elsewhere.write_text("keep me")
    (folder / "evaluation.md").symlink_to(elsewhere)
    with pytest.raises(CommandLineError, match=r"evaluation.md is a link; .*remove it"):
        write_report(evaluation, folder, "t")
    assert elsewhere.read_text() == "keep me"


def test_a_folder_that_is_a_file_is_refused(evaluation, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CommandLineError, match=r"report folder .*file: not a folder"):
        write_report(evaluation, tmp_path / "file", "t")


def test_a_hard_link_in_the_folder_is_never_written_through(evaluation, tmp_path):
    # A hard link is no symlink: O_NOFOLLOW let it through and O_TRUNC emptied the file it shares.
    folder, elsewhere = tmp_path / "reports", tmp_path / "precious.md"
    folder.mkdir()
    elsewhere.write_text("keep me")
    os.link(elsewhere, folder / "evaluation.md")
    with pytest.raises(CommandLineError, match=r"evaluation.md is not a file of its own"):
        write_report(evaluation, folder, "t")
    assert elsewhere.read_text() == "keep me"


def test_a_fifo_in_the_folder_is_refused_instead_of_waiting_for_a_reader(evaluation, tmp_path):
    # Opening a FIFO to write blocks until someone reads it: the run's end hung there for good.
    folder = tmp_path / "reports"
    folder.mkdir()
    os.mkfifo(folder / "evaluation.md")
    with pytest.raises(CommandLineError, match=r"evaluation.md"):
        write_report(evaluation, folder, "t")


def test_a_report_written_again_replaces_the_earlier_one(evaluation, tmp_path):
    (tmp_path / "evaluation.json").write_text("x" * 100_000)
    write_report(evaluation, tmp_path, "t")
    assert json.loads((tmp_path / "evaluation.json").read_text())["title"] == "t"
