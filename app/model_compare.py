"""``sluice watch --compare``: each model's evidence, side by side, summed over the workers.

The source is what every worker already serves at ``/metrics`` (``streams.flow.model_metrics``
writes it): counters and histograms by (pipeline, role, model, version), each shadow's agreement
and the champion's circuit. A scaled-out group is summed: counts and histogram buckets add up,
a shadow's mean difference and flip share are weighed by the events each worker compared, and
the circuit and the canary are told per worker ("open on 1 of 3"), since a worker's breaker is
its own. Importable without the Faust app, so it is tested on the collector's own text.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# (pipeline, role, model, version): one row of the comparison.
ModelKey = tuple[str, str, str, str]
# (pipeline, model, version, threshold) of a shadow's agreement.
ShadowKey = tuple[str, str, str, str]
ROLE_ORDER = {"champion": 0, "canary": 1, "fallback": 2, "shadow": 3}
# A worker's /metrics is tens of KiB; an answer past this is no worker's, and is not read on.
MAX_METRICS_BYTES = 16 * 1024 * 1024
BUCKET = "sluice_model_inference_seconds_bucket"
PREFIXES = ("sluice_model_", "sluice_shadow_", "sluice_circuit_", "sluice_canary_")
# The model counters, by the name the text gives their samples.
COUNTERS = {
    f"sluice_model_{name}_total": name
    for name in ("batches", "events", "errors", "timeouts", "skipped_batches", "skipped_events")
}


@dataclass
class ModelTotals:
    batches: float = 0.0
    events: float = 0.0
    errors: float = 0.0
    timeouts: float = 0.0
    skipped_batches: float = 0.0
    skipped_events: float = 0.0
    # Upper bound in seconds (inf for +Inf) -> batches at or under it, summed over the workers.
    inference: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    score_sum: float = 0.0
    score_count: float = 0.0
    # Workers serving or shadowing with it now: 0 for a version swapped out or rolled back.
    in_use_on: int = 0

    def add(self, sample: str, labels: dict[str, str], value: float) -> None:
        if (counter := COUNTERS.get(sample)) is not None:
            setattr(self, counter, getattr(self, counter) + value)
        elif sample == BUCKET:
            self.inference[float(labels["le"])] += value
        elif sample == "sluice_model_score_sum":
            self.score_sum += value
        elif sample == "sluice_model_score_count":
            self.score_count += value
        elif sample == "sluice_model_info":
            self.in_use_on += 1

    def batch_seconds(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile of the time per batch (inf past
        the last bound): no interpolation inside a bucket pretends to know more than the histogram does."""
        total = self.inference.get(math.inf, 0.0)
        if not total:
            return None
        # A worker's counts that are not numbers (NaN) fit no bucket: past the last one, then.
        return next((bound for bound, below in sorted(self.inference.items()) if below >= q * total), math.inf)

    @property
    def mean_score(self) -> float | None:
        return self.score_sum / self.score_count if self.score_count else None


@dataclass
class Agreement:
    """A shadow against the served model: each worker's means turned back into the sums they came from."""

    compared: float = 0.0
    abs_diff_sum: float = 0.0
    flips: float = 0.0

    def add_worker(self, samples: dict[str, float]) -> None:
        compared = samples.get("sluice_shadow_compared_events_total", 0.0)
        self.compared += compared
        self.abs_diff_sum += samples.get("sluice_shadow_mean_abs_diff", 0.0) * compared
        self.flips += samples.get("sluice_shadow_decision_flip_share", 0.0) * compared

    @property
    def mean_abs_diff(self) -> float | None:
        return self.abs_diff_sum / self.compared if self.compared else None

    @property
    def flip_share(self) -> float | None:
        return self.flips / self.compared if self.compared else None


CIRCUIT_NAMES = {0: "closed", 1: "half-open", 2: "open"}


@dataclass
class PipelineHealth:
    """What each worker's own breaker and canary say, counted by worker."""

    workers: int = 0
    circuits: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    trips: float = 0.0
    rolled_back: int = 0

    def add(self, sample: str, value: float) -> None:
        if sample == "sluice_circuit_state":
            self.workers += 1
            self.circuits[CIRCUIT_NAMES.get(int(value), "unknown") if math.isfinite(value) else "unknown"] += 1
        elif sample == "sluice_circuit_trips_total":
            self.trips += value
        elif sample == "sluice_canary_rolled_back" and value:
            self.rolled_back += 1


HEALTH = ("sluice_circuit_state", "sluice_circuit_trips_total", "sluice_canary_rolled_back")


@dataclass
class Evidence:
    """Every model's evidence over the workers read so far."""

    models: dict[ModelKey, ModelTotals] = field(default_factory=lambda: defaultdict(ModelTotals))
    agreements: dict[ShadowKey, Agreement] = field(default_factory=lambda: defaultdict(Agreement))
    pipelines: dict[str, PipelineHealth] = field(default_factory=lambda: defaultdict(PipelineHealth))
    # (pipeline, model, version) of a shadow -> outputs the shadow topic never got.
    shadow_lost_outputs: dict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))

    def add(self, text: str) -> None:
        """Add one worker's ``/metrics`` text; ``ValueError`` for what is not a sluice worker's
        metrics (Prometheus text, its families with their labels), and then nothing of it is added."""
        shadows: dict[ShadowKey, dict[str, float]] = defaultdict(dict)
        for name, labels, value in _samples(text):
            if "role" in labels:
                key = (labels["pipeline"], labels["role"], labels["model"], labels["version"])
                self.models[key].add(name, labels, value)
            elif "threshold" in labels:
                shadows[(labels["pipeline"], labels["model"], labels["version"], labels["threshold"])][name] = value
            elif name == "sluice_shadow_lost_outputs_total":
                self.shadow_lost_outputs[(labels["pipeline"], labels["model"], labels["version"])] += value
            elif name in HEALTH:
                self.pipelines[labels["pipeline"]].add(name, value)
        for shadow, samples in shadows.items():
            self.agreements[shadow].add_worker(samples)


def _wanted(name: str, labels: dict[str, str]) -> list[str]:
    """The labels ``Evidence.add`` reads of a sample ``name`` with ``labels``."""
    if "role" in labels:
        return ["pipeline", "model", "version", *(["le"] if name == BUCKET else [])]
    if "threshold" in labels or name == "sluice_shadow_lost_outputs_total":
        return ["pipeline", "model", "version"]
    return ["pipeline"] if name in HEALTH else []


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The model samples of a worker's text, each with the labels ``Evidence.add`` reads, all read
    before any is added; names and versions made printable (they are shown on a terminal)."""
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIXES):
                continue
            labels = {k: "".join(c if c.isprintable() else "?" for c in v) for k, v in sample.labels.items()}
            missing = [label for label in _wanted(sample.name, labels) if label not in labels]
            if missing:
                raise ValueError(f"{sample.name} without the label(s) {missing}")
            if sample.name == BUCKET:
                float(labels["le"])  # ValueError when it is not a bound
            found.append((sample.name, labels, float(sample.value)))
    return found


def metrics_url(worker: str) -> str:
    """A worker's metrics endpoint, from its web address (or the endpoint itself)."""
    base = worker.rstrip("/")
    return base if base.endswith("/metrics") else f"{base}/metrics"


async def scrape(session: aiohttp.ClientSession, worker: str) -> str:
    """One worker's ``/metrics`` text; raises ``aiohttp.ClientError`` or ``TimeoutError`` when it does
    not answer, ``ValueError`` when the answer is far larger than metrics (read no further)."""
    async with session.get(metrics_url(worker)) as reply:
        reply.raise_for_status()
        body = bytearray()
        async for chunk in reply.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_METRICS_BYTES:
                raise ValueError(f"more than {MAX_METRICS_BYTES // (1024 * 1024)} MiB")
        # Prometheus text is UTF-8 whatever the header claims; a byte that is not shows as U+FFFD.
        return body.decode("utf-8", errors="replace")


def render(now: Evidence, before: Evidence | None = None, elapsed_s: float = 0.0) -> str:
    """One block per pipeline: a row per model, then each shadow's agreement. With the evidence
    read ``elapsed_s`` earlier, each model's events per second since then."""
    blocks = []
    for pipeline in sorted({key[0] for key in now.models}):
        rows = [["role", "model", "version", "events", "ev/s", "batches", "errors", "timeouts", "skipped"]]
        rows[0] += ["batch p50", "batch p99", "mean score"]
        keys = sorted((k for k in now.models if k[0] == pipeline), key=lambda k: (ROLE_ORDER.get(k[1], 9), k[2:]))
        for key in keys:
            totals = now.models[key]
            earlier = before.models.get(key) if before is not None else None
            version = key[3] if totals.in_use_on else f"{key[3]} (not in use)"
            rows.append([key[1], key[2], version, *_numbers(totals, earlier, elapsed_s)])
        lines = [_pipeline_line(pipeline, now.pipelines.get(pipeline)), *_table(rows)]
        lines += _agreement_lines(pipeline, now)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "no models reported (are these sluice workers with a running pipeline?)"


def _numbers(totals: ModelTotals, earlier: ModelTotals | None, elapsed_s: float) -> list[str]:
    rate = "-"
    # A worker that restarted counts from zero again: no rate rather than a negative one.
    if earlier is not None and elapsed_s > 0 and totals.events >= earlier.events:
        rate = f"{(totals.events - earlier.events) / elapsed_s:,.0f}"
    skipped = f"{totals.skipped_batches:,.0f}"
    if totals.skipped_batches:
        skipped += f" ({totals.skipped_events:,.0f} ev)"
    mean = totals.mean_score
    return [
        f"{totals.events:,.0f}",
        rate,
        f"{totals.batches:,.0f}",
        f"{totals.errors:,.0f}",
        f"{totals.timeouts:,.0f}",
        skipped,
        _batch_time(totals, 0.5),
        _batch_time(totals, 0.99),
        "-" if mean is None else f"{mean:.3f}",
    ]


def _batch_time(totals: ModelTotals, q: float) -> str:
    bound = totals.batch_seconds(q)
    if bound is None:
        return "-"
    if math.isinf(bound):
        finite = [b for b in totals.inference if math.isfinite(b)]
        return f"> {max(finite) * 1000:g} ms" if finite else "-"
    return f"<= {bound * 1000:g} ms"


def _pipeline_line(pipeline: str, health: PipelineHealth | None) -> str:
    if health is None or not health.workers:
        return f"pipeline {pipeline}"
    workers = f"{health.workers} worker{'s' if health.workers != 1 else ''}"
    states = ", ".join(f"{state} on {n}" for state, n in sorted(health.circuits.items(), key=lambda item: item[0]))
    line = f"pipeline {pipeline} ({workers}): champion's circuit {states}"
    if health.trips:
        line += f" ({health.trips:,.0f} trips)"
    if health.rolled_back:
        line += f"; canary ROLLED BACK on {health.rolled_back} of {health.workers}"
    return line


def _agreement_lines(pipeline: str, now: Evidence) -> list[str]:
    lines = []
    for (p, model, version, threshold), agreement in sorted(now.agreements.items()):
        mad, flips = agreement.mean_abs_diff, agreement.flip_share
        if p != pipeline:
            continue
        if mad is None or flips is None:
            lines.append(f"  shadow {model} v{version} vs served: nothing compared yet")
            continue
        lines.append(
            f"  shadow {model} v{version} vs served: mean |diff| {mad:.4f}, decisions flipped at {threshold}: "
            f"{flips:.2%} of {agreement.compared:,.0f} events"
        )
    for (p, model, version), lost in sorted(now.shadow_lost_outputs.items()):
        if p == pipeline and lost:
            lines.append(f"  shadow {model} v{version}: {lost:,.0f} outputs never reached the shadow topic")
    return lines


def _table(rows: list[list[str]]) -> list[str]:
    """Columns as wide as their widest cell: names to the left, numbers to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def worker_problem(worker: str) -> str | None:
    """Why ``--worker`` cannot be a worker's web address, or None."""
    parts = urlsplit(worker)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--worker {worker!r}: expected a worker's web address, http://HOST:PORT"
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        return f"--worker {worker!r}: the port is not a number from 0 to 65,535"
    return None


async def read_workers(session: aiohttp.ClientSession, workers: Sequence[str]) -> tuple[Evidence, list[str]]:
    """The evidence summed over the workers that answered, and a line for each that did not."""
    texts = await asyncio.gather(*(scrape(session, worker) for worker in workers), return_exceptions=True)
    evidence, problems = Evidence(), []
    for worker, text in zip(workers, texts, strict=True):
        if isinstance(text, ValueError):
            problems.append(f"{worker}: not Prometheus metrics ({text})")
            continue
        if isinstance(text, BaseException):
            if not isinstance(text, aiohttp.ClientError | TimeoutError):
                raise text
            problems.append(f"{worker}: no answer ({text or type(text).__name__})")
            continue
        try:
            evidence.add(text)
        except ValueError as exc:
            problems.append(f"{worker}: not Prometheus metrics ({exc})")
    return evidence, problems
