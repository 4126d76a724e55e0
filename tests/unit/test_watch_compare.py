"""`sluice watch --compare`: the workers' /metrics, as the collector writes it, summed and shown side by side."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from app.model_compare import MAX_METRICS_BYTES, Evidence, read_workers, render, worker_problem
from streams.flow.breaker import Circuit
from streams.flow.model_metrics import PipelineModels
from streams.flow.model_stats import Agreement, ModelBook
from tests.one_line import one_line_exit_2
from tests.unit.test_cli import run_cli, unreachable_config
from tests.unit.test_model_metrics import evidence, metrics_text


def read(*texts: str) -> Evidence:
    summed = Evidence()
    for text in texts:
        summed.add(text)
    return summed


def with_shadow(mad_pairs: tuple[list[float], list[float]], circuit: Circuit = Circuit.CLOSED) -> PipelineModels:
    """A champion and a shadow whose agreement is counted on ``mad_pairs`` (shadow, served)."""
    book = ModelBook()
    book.of("champion", "mlp", "1").scored(np.array(mad_pairs[1]), 0.003)
    shadow = book.of("shadow", "transformer", "7")
    shadow.scored(np.array(mad_pairs[0]), 0.03)
    shadow.agreement = Agreement(threshold=0.5)
    shadow.agreement.observe(np.array(mad_pairs[0]), np.array(mad_pairs[1]))
    return PipelineModels(
        [("champion", "mlp", "1"), ("shadow", "transformer", "7")], list(book.models.values()), circuit
    )


def test_one_worker_reads_as_the_engine_counted():
    models = read(metrics_text({"fraud": evidence()})).models
    champion = models[("fraud", "champion", "mlp", "1")]
    assert (champion.events, champion.batches, champion.timeouts, champion.errors) == (4, 2, 1, 0)
    assert champion.mean_score == pytest.approx(1.5 / 4)
    # Batches of 2 ms and 4 ms: the median is in the bucket up to 2.5 ms, the 99th in the one up to 5 ms.
    assert (champion.batch_seconds(0.5), champion.batch_seconds(0.99)) == (0.0025, 0.005)
    shadow = models[("fraud", "shadow", "transformer", "7")]
    assert (shadow.skipped_batches, shadow.skipped_events) == (1, 5)
    assert models[("fraud", "canary", "mlp", "2")].errors == 1


def test_workers_add_up_and_a_shadows_agreement_is_weighed_by_the_events_each_compared():
    # Worker one: 4 events, |diff| 0.1 each, no flip. Worker two: 1 event, |diff| 0.6, a flip.
    one = metrics_text({"fraud": with_shadow(([0.2, 0.2, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]))})
    two = metrics_text({"fraud": with_shadow(([0.9], [0.3]), Circuit.OPEN)})
    summed = read(one, two)
    assert summed.models[("fraud", "champion", "mlp", "1")].events == 5
    agreement = summed.agreements[("fraud", "transformer", "7", "0.5")]
    assert agreement.compared == 5
    assert agreement.mean_abs_diff == pytest.approx((0.4 + 0.6) / 5)
    assert agreement.flip_share == pytest.approx(1 / 5)
    health = summed.pipelines["fraud"]
    assert (health.workers, dict(health.circuits)) == (2, {"closed": 1, "open": 1})


def test_the_summary_shows_a_row_per_model_and_each_shadows_agreement():
    before = read(metrics_text({"fraud": evidence()}))
    now = read(metrics_text({"fraud": evidence()}), metrics_text({"fraud": evidence()}))
    lines = render(now, before, elapsed_s=2.0).splitlines()
    assert lines[0] == "pipeline fraud (2 workers): champion's circuit open on 2 (4 trips)"
    assert lines[1].split() == [
        "role", "model", "version", "events", "ev/s", "batches", "errors", "timeouts", "skipped",
        "batch", "p50", "batch", "p99", "mean", "score",
    ]  # fmt: skip
    rows = [line.split() for line in lines[2:6]]
    assert [row[0] for row in rows] == ["champion", "canary", "fallback", "shadow"]
    # champion: 8 events, (8 - 4) / 2 s, 4 batches, 0 errors, 2 timeouts, nothing skipped.
    assert rows[0][:9] == ["champion", "mlp", "1", "8", "2", "4", "0", "2", "0"]
    assert rows[0][9:] == ["<=", "2.5", "ms", "<=", "5", "ms", "0.375"]
    assert rows[3][8:10] == ["2", "(10"], "a shadow's skipped batches, and their events"
    assert lines[6] == (
        "  shadow transformer v7 vs served: mean |diff| 0.2250, decisions flipped at 0.5: 25.00% of 8 events"
    )
    assert lines[7] == "  shadow transformer v7: 6 outputs never reached the shadow topic"


def test_a_restarted_worker_shows_no_rate_rather_than_a_negative_one():
    before = read(metrics_text({"fraud": evidence()}), metrics_text({"fraud": evidence()}))
    now = read(metrics_text({"fraud": evidence()}))
    assert render(now, before, 2.0).splitlines()[2].split()[4] == "-"


def test_batch_time_past_the_last_bucket_says_so():
    book = ModelBook()
    book.of("champion", "slow", "1").scored(np.array([0.5]), 3.0)
    text = metrics_text({"p": PipelineModels([("champion", "slow", "1")], list(book.models.values()))})
    totals = read(text).models[("p", "champion", "slow", "1")]
    assert math.isinf(totals.batch_seconds(0.5) or 0.0)
    assert "> 1000 ms" in render(read(text))


def test_a_version_no_longer_in_use_keeps_its_row_and_says_so():
    book = ModelBook()
    book.of("canary", "mlp", "2").scored(np.array([0.5]), 0.001)
    book.of("champion", "mlp", "1").scored(np.array([0.5]), 0.001)
    rolled_back = PipelineModels([("champion", "mlp", "1")], list(book.models.values()), canary_rolled_back=True)
    lines = render(read(metrics_text({"p": rolled_back}))).splitlines()
    assert lines[0] == "pipeline p (1 worker): champion's circuit closed on 1; canary ROLLED BACK on 1 of 1"
    assert lines[2].split()[:3] == ["champion", "mlp", "1"]
    assert lines[3].split()[:6] == ["canary", "mlp", "2", "(not", "in", "use)"]


def test_nothing_to_show_says_why():
    assert render(read(metrics_text({"p-rekey": None}))).startswith("no models reported")


@pytest.mark.parametrize(
    ("worker", "problem"),
    [
        ("http://127.0.0.1:6066", None),
        ("https://worker-2.internal", None),
        ("127.0.0.1:6066", "--worker '127.0.0.1:6066': expected a worker's web address, http://HOST:PORT"),
        ("ftp://host", "--worker 'ftp://host': expected a worker's web address, http://HOST:PORT"),
        ("http://host:99999", "--worker 'http://host:99999': the port is not a number from 0 to 65,535"),
    ],
)
def test_a_worker_address_is_checked_before_anything_is_asked(worker, problem):
    assert worker_problem(worker) == problem


@asynccontextmanager
async def serving(text: str, *, content_type: str = "text/plain", charset: str | None = None) -> AsyncIterator[str]:
    """A worker's web server as far as --compare sees it: ``/metrics`` answering ``text``."""

    async def metrics(request: web.Request) -> web.Response:
        if charset is not None:  # whatever the server claims, the bytes are UTF-8
            headers = {"Content-Type": f"{content_type}; charset={charset}"}
            return web.Response(body=text.encode(), headers=headers)
        return web.Response(text=text, content_type=content_type)

    application = web.Application()
    application.router.add_get("/metrics", metrics)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def dead_address() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_a_worker_that_does_not_answer_or_is_no_sluice_worker_is_one_line_each():
    metrics = metrics_text({"fraud": evidence()})
    async with (
        serving("<html>not metrics</html>") as html,
        serving(metrics) as good,
        aiohttp.ClientSession() as session,
    ):
        summed, problems = await read_workers(session, [good, html, dead_address(), f"{good}/metrics"])
    assert summed.models[("fraud", "champion", "mlp", "1")].events == 8, "the good worker, named twice"
    assert len(problems) == 2
    assert problems[0].startswith(f"{html}: not Prometheus metrics (")
    assert "no answer (" in problems[1]


async def test_the_command_sums_two_workers_and_refreshes(tmp_path: Path):
    config = str(unreachable_config(tmp_path))  # --compare never asks the broker
    one = metrics_text({"fraud": with_shadow(([0.2, 0.2, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]))})
    two = metrics_text({"fraud": with_shadow(([0.9], [0.3]), Circuit.OPEN)})
    async with serving(one) as first, serving(two) as second:
        args = ("--config", config, "watch", "--compare", "--worker", first, "--worker", second)
        result = await asyncio.to_thread(run_cli, *args, "--every", "0.1", "-n", "2")
        down = await asyncio.to_thread(
            run_cli, "--config", config, "watch", "--compare", "--worker", dead_address(), "-n", "1"
        )
    assert result.returncode == 0, result.stderr
    summaries = result.stdout.split("2 of 2 worker(s) answered")
    assert len(summaries) == 3, result.stdout  # two summaries, each after its header
    assert "pipeline fraud (2 workers): champion's circuit closed on 1, open on 1" in summaries[2]
    champion = next(line.split() for line in summaries[2].splitlines() if line.startswith("champion"))
    assert champion[:4] == ["champion", "mlp", "1", "5"]
    assert "mean |diff| 0.2000, decisions flipped at 0.5: 20.00% of 5 events" in summaries[2]
    assert down.returncode == 1, "no worker answered: a script can tell"
    assert "0 of 1 worker(s) answered" in down.stdout and "no answer (" in down.stdout
    assert "no models reported" not in down.stdout, "nothing to say about models when no worker answered"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("--compare", "--topic", "out"), "sluice watch: --topic reads a topic; --compare reads the workers' /metrics"),
        (("--compare", "--summary"), "sluice watch: --summary reads a topic; --compare reads the workers' /metrics"),
        (("--worker", "http://127.0.0.1:6066"), "sluice watch: --worker goes with --compare"),
        (("--compare", "--every", "0"), "sluice watch: --every 0.0: expected seconds >= 0.1"),
        (
            ("--compare", "--worker", "localhost:6066"),
            "sluice watch: --worker 'localhost:6066': expected a worker's web address, http://HOST:PORT",
        ),
    ],
)
def test_compare_flags_that_mean_nothing_are_one_line_and_status_2(tmp_path, args, line):
    assert one_line_exit_2(run_cli("--config", str(unreachable_config(tmp_path)), "watch", *args)) == line


@pytest.mark.parametrize(
    "text",
    [
        # A sample of the model families without the labels a sluice worker always writes.
        'sluice_model_events_total{role="champion"} 3\n',
        'sluice_circuit_state{worker="w"} 0\n',
        'sluice_model_inference_seconds_bucket{pipeline="p",role="champion",model="m",version="1"} 2\n',
        'sluice_model_inference_seconds_bucket{pipeline="p",role="champion",model="m",version="1",le="soon"} 2\n',
    ],
)
async def test_a_worker_answering_metrics_that_are_not_a_sluice_workers_is_one_line_and_counts_nothing(text):
    async with serving(text) as odd, serving(metrics_text({"fraud": evidence()})) as good, aiohttp.ClientSession() as s:
        summed, problems = await read_workers(s, [odd, good])
    assert len(problems) == 1 and problems[0].startswith(f"{odd}: not Prometheus metrics ("), problems
    assert set(summed.models) == set(read(metrics_text({"fraud": evidence()})).models), "nothing of the odd one"
    assert "p" not in summed.pipelines
    render(summed)


@pytest.mark.parametrize(
    "text",
    [
        # Only the +Inf bucket: no finite bound to say "past the last bucket" with (max() of nothing).
        'sluice_model_inference_seconds_bucket{pipeline="p",role="champion",model="m",version="1",le="+Inf"} 2\n',
        # NaN counts: no bucket ever holds the quantile (next() of nothing raised StopIteration).
        'sluice_model_inference_seconds_bucket{pipeline="p",role="champion",model="m",version="1",le="0.1"} NaN\n'
        'sluice_model_inference_seconds_bucket{pipeline="p",role="champion",model="m",version="1",le="+Inf"} NaN\n',
        # A circuit state that is no state: int() of it raised OverflowError (inf) or ValueError (NaN).
        'sluice_circuit_state{pipeline="p"} +Inf\n'
        'sluice_model_events_total{pipeline="p",role="champion",model="m",version="1"} 1\n',
        'sluice_circuit_state{pipeline="p"} NaN\n'
        'sluice_model_events_total{pipeline="p",role="champion",model="m",version="1"} 1\n',
    ],
)
def test_odd_numbers_are_shown_not_a_traceback(text):
    shown = render(read(text))
    assert "pipeline p" in shown and "champion" in shown


async def test_a_charset_no_one_knows_or_a_body_far_too_large_is_no_traceback():
    metrics = metrics_text({"fraud": evidence()})
    huge = "# padding\n" * (MAX_METRICS_BYTES // 10 + 1)
    async with (
        # reply.text() raised LookupError out of read_workers for the charset; the body was read whole.
        serving(metrics, charset="no-such-charset") as odd_charset,
        serving(huge) as too_big,
        aiohttp.ClientSession() as session,
    ):
        summed, problems = await read_workers(session, [odd_charset, too_big])
    assert summed.models[("fraud", "champion", "mlp", "1")].events == 4, "Prometheus text is UTF-8"
    assert problems == [f"{too_big}: not Prometheus metrics (more than 16 MiB)"]


async def test_names_from_a_worker_cannot_write_terminal_controls():
    text = 'sluice_model_events_total{pipeline="p",role="champion",model="m\\u001b[2J",version="1"} 1\n'
    text = text.replace("\\u001b", "\x1b")
    assert "\x1b" not in render(read(text))
