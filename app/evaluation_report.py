"""An evaluation (``models.evaluation``) as files a person reads and a program compares: Markdown
with tables, JSON with stable keys, and a PNG of the ROC and calibration curves.

matplotlib is optional: imported only to draw, and without it the Markdown says how to get the
plot. Files are written only inside the folder given, by plain names, never through a link
(a report folder may be shared; a planted link must not make sluice overwrite another file).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from models.evaluation import (
    HISTOGRAM_BINS,
    QUANTILES,
    Agreement,
    CalibrationBin,
    Distribution,
    Evaluation,
    ModelResult,
)
from streams.errors import CommandLineError

DIGITS = 6  # metrics to a millionth: far finer than any difference between models that matters
STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
QUANTILE_NAMES = tuple(f"p{round(q * 100)}" for q in QUANTILES)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, DIGITS)


def report_json(evaluation: Evaluation, title: str) -> dict[str, Any]:
    """The evaluation as JSON-ready data; ``evaluation_from_json`` reads it back."""
    e = evaluation
    return {
        "title": title,
        "threshold": e.threshold,
        "events": {"total": e.events, "counted": e.counted, "unlabelled": e.unlabelled, "unscored": e.unscored},
        "unscored_by_model": dict(e.unscored_by_model),
        "champion": e.models[0].model,
        "models": [_model_json(m) for m in e.models],
        "agreement": [
            {"model": a.model, "champion": a.champion, "events": a.count, "mean_abs_diff": _r(a.mean_abs_diff)}
            | {"flips": a.flips, "flip_share": _r(a.flip_share)}
            for a in e.agreement
        ],
    }


def _model_json(m: ModelResult) -> dict[str, Any]:
    d = m.distribution
    return {
        "model": m.model,
        "events": m.count,
        "positives": m.positives,
        "roc_auc": _r(m.roc_auc),
        "pr_auc": _r(m.pr_auc),
        "log_loss": _r(m.log_loss),
        "note": m.note,
        "calibration": [
            {"events": b.count, "mean_score": _r(b.mean_score), "positive_rate": _r(b.positive_rate)}
            | {"score_min": _r(b.score_min), "score_max": _r(b.score_max)}
            for b in m.calibration
        ],
        "distribution": {
            "mean": _r(d.mean),
            "quantiles": {name: _r(q) for name, q in zip(QUANTILE_NAMES, d.quantiles, strict=True)},
            "histogram": {"bins": HISTOGRAM_BINS, "range": [0.0, 1.0], "counts": list(d.histogram)},
        },
        "roc_curve": {"fpr": [_r(x) for x, _ in m.roc_curve], "tpr": [_r(y) for _, y in m.roc_curve]},
    }


def evaluation_from_json(data: Mapping[str, Any]) -> Evaluation:
    """The evaluation ``report_json`` wrote (its numbers rounded to ``DIGITS``)."""
    events = data["events"]
    return Evaluation(
        models=tuple(_model_from_json(m) for m in data["models"]),
        agreement=tuple(
            Agreement(a["model"], a["champion"], a["events"], a["mean_abs_diff"], a["flips"], a["flip_share"])
            for a in data["agreement"]
        ),
        threshold=data["threshold"],
        events=events["total"],
        counted=events["counted"],
        unlabelled=events["unlabelled"],
        unscored=events["unscored"],
        unscored_by_model=tuple(data["unscored_by_model"].items()),
    )


def _model_from_json(m: Mapping[str, Any]) -> ModelResult:
    d, roc = m["distribution"], m["roc_curve"]
    return ModelResult(
        model=m["model"],
        count=m["events"],
        positives=m["positives"],
        roc_auc=m["roc_auc"],
        pr_auc=m["pr_auc"],
        log_loss=m["log_loss"],
        calibration=tuple(
            CalibrationBin(b["events"], b["mean_score"], b["positive_rate"], b["score_min"], b["score_max"])
            for b in m["calibration"]
        ),
        distribution=Distribution(
            d["mean"], tuple(d["quantiles"][n] for n in QUANTILE_NAMES), tuple(d["histogram"]["counts"])
        ),
        roc_curve=tuple(zip(roc["fpr"], roc["tpr"], strict=True)),
        note=m["note"],
    )


def _cell(text: str) -> str:
    """Text that stays in its table cell: a model's name is the user's."""
    return " ".join(text.split()).replace("|", "\\|")


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def report_markdown(evaluation: Evaluation, title: str, plot: str | None) -> str:
    """The report a person reads; ``plot`` is the PNG's file name, None if it could not be drawn."""
    e, champion = evaluation, evaluation.models[0].model
    by_model = ", ".join(f"{_cell(name)}: {n:,}" for name, n in e.unscored_by_model)
    lines = [
        f"# {_cell(title)}",
        "",
        f"{e.counted:,} of {e.events:,} events counted: each has a label and a score from every model. "
        f"Left out: {e.unlabelled:,} with no label, {e.unscored:,} with a label but not every model's score "
        f"(missing scores: {by_model}). Decisions: score >= {e.threshold:g}.",
        "",
        "## Metrics",
        "",
        "| model | events | positives | ROC AUC | PR AUC (average precision) | log loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in e.models:
        role = " (champion)" if m.model == champion else ""
        lines.append(
            f"| {_cell(m.model)}{role} | {m.count:,} | {m.positives:,} | {_num(m.roc_auc)} | {_num(m.pr_auc)} "
            f"| {_num(m.log_loss)} |"
        )
    notes = [f"- {_cell(m.model)}: {m.note}" for m in e.models if m.note]
    lines += ["", *notes] if notes else []
    if e.agreement:
        lines += ["", f"## Agreement with the champion ({_cell(champion)})", ""]
        lines += [
            f"- {_cell(a.model)}: mean absolute score difference {a.mean_abs_diff:.4f}; the decision at "
            f"{e.threshold:g} flips for {a.flip_share:.2%} of events ({a.flips:,} of {a.count:,})"
            for a in e.agreement
        ]
    lines += ["", "## Score distributions", "", "| model | mean | " + " | ".join(QUANTILE_NAMES) + " |"]
    lines.append("| --- |" + " ---: |" * (len(QUANTILE_NAMES) + 1))
    for m in e.models:
        qs = " | ".join(f"{q:.4f}" for q in m.distribution.quantiles)
        lines.append(f"| {_cell(m.model)} | {m.distribution.mean:.4f} | {qs} |")
    lines += ["", "## Calibration by decile of score", ""]
    lines.append("Equal-count bins of events by score: a calibrated model's mean score matches the positive rate.")
    for m in e.models:
        lines += ["", f"### {_cell(m.model)}", "", "| decile | events | scores | mean score | positive rate |"]
        lines.append("| ---: | ---: | --- | ---: | ---: |")
        lines += [
            f"| {i} | {b.count:,} | {b.score_min:.4f} to {b.score_max:.4f} | {b.mean_score:.4f} "
            f"| {b.positive_rate:.4f} |"
            for i, b in enumerate(m.calibration, start=1)
        ]
    lines += ["", "## ROC and calibration curves", ""]
    if plot is None:
        lines.append("The plot needs matplotlib: `pip install matplotlib`, then write the report again.")
    else:
        lines.append(f"![ROC and calibration curves]({plot})")
    return "\n".join(lines) + "\n"


def plotting_available() -> bool:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def draw(evaluation: Evaluation, out: IO[bytes]) -> None:
    """ROC curves and calibration curves side by side, as PNG. Needs matplotlib."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend to set

    fig = Figure(figsize=(11, 4.8))
    roc, cal = fig.subplots(1, 2)
    for m in evaluation.models:
        if m.roc_curve:
            fpr, tpr = zip(*m.roc_curve, strict=True)
            roc.plot(fpr, tpr, label=f"{m.model} (AUC {_num(m.roc_auc)})")
        cal.plot([b.mean_score for b in m.calibration], [b.positive_rate for b in m.calibration], "o-", label=m.model)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({evaluation.counted:,} events)")
    cal.set(xlabel="mean score", ylabel="positive rate", title="Calibration by decile of score")
    for ax in (roc, cal):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)  # chance; perfect calibration
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))  # a perfect model's curve runs along the edges
        if ax.get_legend_handles_labels()[0]:  # no ROC curve at all when the labels hold one class
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=110)


def _open_inside(folder: Path, name: str) -> IO[bytes]:
    """``folder/name`` for writing, refusing a link there (and opened without following one, in
    case it appears meanwhile), a hard link (another file's contents) and anything but a regular
    file (a FIFO would wait for a reader); emptied only once it is known to be the report's own."""
    path = folder / name
    if path.is_symlink():
        raise CommandLineError(
            f"report folder {folder}: {name} is a link; sluice writes only plain files inside the folder: remove it"
        )
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise CommandLineError(f"report folder {folder}: cannot write {name} ({exc.strerror})") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or opened.st_nlink > 1:
            raise CommandLineError(
                f"report folder {folder}: {name} is not a file of its own (a hard link, a FIFO, a device?); "
                "sluice writes only plain files inside the folder: remove it"
            )
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def write_report(evaluation: Evaluation, folder: Path, title: str, *, stem: str = "evaluation") -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and (with matplotlib) ``<stem>.png`` in ``folder`` (made if
    missing); returns the paths written. ``title`` heads the report and names no file; ``stem``
    must be a plain file name, so nothing is written outside ``folder``."""
    if not STEM.fullmatch(stem) or stem in (".", ".."):
        raise CommandLineError(f"report name {stem!r}: expected a plain file name (letters, digits, '.', '_', '-')")
    if folder.exists() and not folder.is_dir():
        raise CommandLineError(f"report folder {folder}: not a folder; give a folder to write the report in")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandLineError(f"report folder {folder}: cannot create it ({exc.strerror})") from None
    folder = folder.resolve()
    written = []
    png = f"{stem}.png" if plotting_available() else None
    if png is not None:
        with _open_inside(folder, png) as out:
            draw(evaluation, out)
        written.append(folder / png)
    for name, data in (
        (f"{stem}.md", report_markdown(evaluation, title, png).encode()),
        (f"{stem}.json", orjson.dumps(report_json(evaluation, title), option=orjson.OPT_INDENT_2) + b"\n"),
    ):
        with _open_inside(folder, name) as out:
            out.write(data)
        written.append(folder / name)
    return written
