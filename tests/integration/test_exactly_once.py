"""Exactly-once delivery against the real broker: a read_committed consumer sees every source
position exactly once (0 missing, 0 duplicates) across a SIGKILL, a rebalance, a broker
restart, and a worker paused past its session timeout that wakes up while another owns its
partitions.

Each test first makes the worker reach a known point: outputs sent in a transaction that is
still open (visible to a read_uncommitted reader, not to a read_committed one).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from pathlib import Path

import orjson

from app.demo_events import demo_events
from tests.integration.kafka_helpers import (
    ROOT,
    finished,
    produce_raw,
    read_topic,
    running_worker,
    start_producing,
    stop_gracefully,
    topics_for,
    unique,
    wait_for_log,
    write_config,
)


def exactly_once(interval_ms: int) -> str:
    return f'delivery = "exactly_once"\ntransaction_interval_ms = {interval_ms}'


def positions(records) -> Counter[tuple[str, int, int]]:
    """How many outputs name each source position (predictions and dead letters alike)."""
    return Counter(
        (body["source"]["topic"], body["source"]["partition"], body["source"]["offset"])
        for body in (orjson.loads(r.value) for r in records)
    )


async def committed_and_all(kafka: str, topic: str) -> tuple[int, int]:
    """Records of ``topic`` now: those in committed transactions, and all (open or aborted ones too)."""
    committed = await read_topic(kafka, topic, expected=10**9, within_s=1.5, isolation_level="read_committed")
    everything = await read_topic(kafka, topic, expected=10**9, within_s=1.5)
    return len(committed), len(everything)


async def until_a_transaction_is_open(kafka: str, topic: str, *, at_least: int, within_s: float = 60) -> None:
    """Until ``topic`` holds outputs not yet committed (and ``at_least`` committed ones)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        committed, everything = await committed_and_all(kafka, topic)
        if committed >= at_least and everything > committed:
            return
    raise AssertionError(f"no open transaction on {topic} after {within_s}s")


async def until_sent_and_none_committed(kafka: str, topic: str, count: int, tries: int = 60) -> None:
    """Until ``topic`` holds ``count`` outputs, all in transactions still open (a long interval's)."""
    committed, everything = 0, 0
    for _ in range(tries):
        committed, everything = await committed_and_all(kafka, topic)
        if everything >= count:
            break
    assert (committed, everything) == (0, count)


async def exactly_once_outputs(
    kafka: str, topics: dict[str, str], count: int, *, letters: int = 0, within_s: float = 120
) -> None:
    """``count`` positions, each with exactly one output: a prediction, or one of ``letters`` dead letters."""
    outputs = await read_topic(
        kafka,
        topics["output_topic"],
        expected=count - letters,
        within_s=within_s,
        idle=3,
        isolation_level="read_committed",
    )
    dead = await read_topic(
        kafka, topics["dead_letter_topic"], expected=letters, within_s=30, idle=2, isolation_level="read_committed"
    )
    seen = positions(outputs) + positions(dead)
    expected = {(topics["input_topic"], p, o) for (_, p, o) in seen}
    duplicates = {pos: n for pos, n in seen.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} positions with more than one output, e.g. {list(duplicates)[:5]}"
    assert len(seen) == count, f"{count - len(seen)} positions without an output"
    assert set(seen) == expected


def restart_broker() -> None:
    subprocess.run([str(ROOT / "docker" / "kafka-local"), "restart"], check=True, timeout=180)


def bad_events(count: int) -> list[tuple[bytes | None, bytes | None]]:
    return [(b"acct-bad", b"{not json " + str(i).encode()) for i in range(count)]


async def test_a_worker_killed_mid_transaction_leaves_every_position_scored_exactly_once(kafka, tmp_path):
    name = unique("eos-kill")
    topics = topics_for(name)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="eoskill", extra=exactly_once(500), **topics)
    count, rate, seed, bad = 4000, 800, 31, 40
    log = tmp_path / "first.log"

    # The worker kills itself at a known point: three transactions committed, then outputs sent,
    # acknowledged and left in a transaction still open.
    hook = {"SLUICE_TEST_KILL_IN_TRANSACTION_AFTER_COMMITS": "3"}
    with running_worker(config, log, ready_text="pipeline eoskill: ready", env=hook) as first:
        await produce_raw(kafka, topics["input_topic"], bad_events(bad))
        producer = start_producing(config, count, rate, seed)
        assert first.wait(timeout=120) == -signal.SIGKILL
    with running_worker(config, tmp_path / "second.log", ready_text="pipeline eoskill: scoring") as second:
        finished(producer)
        await exactly_once_outputs(kafka, topics, count + bad, letters=bad)
        assert stop_gracefully(second) == 0
    committed, everything = await committed_and_all(kafka, topics["output_topic"])
    assert everything > committed, "the killed worker's open transaction was aborted, not committed"


async def test_a_rebalance_to_a_second_worker_and_back_scores_every_position_exactly_once(kafka, tmp_path):
    name = unique("eos-rebalance")
    topics = topics_for(name)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="eosreb", partitions=4, extra=exactly_once(300), **topics)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    with running_worker(config, first_log, ready_text="transactions open for ") as first:
        # Events keep coming while the second worker starts and takes half the partitions ...
        before = start_producing(config, 3000, 300, seed=32)
        await until_a_transaction_is_open(kafka, topics["output_topic"], at_least=600)
        with running_worker(config, second_log, ready_text="transactions open for ") as second:
            wait_for_log(first_log, "partitions revoked", proc=first)
            finished(before)
            # ... and while it hands them back, once both workers committed some of these.
            during = start_producing(config, 2000, 300, seed=33)
            await until_a_transaction_is_open(kafka, topics["output_topic"], at_least=3600)
            assert stop_gracefully(second) == 0
        finished(during)
        await exactly_once_outputs(kafka, topics, 5000)
        assert first.poll() is None
    assert "exactly-once:" not in first_log.read_text() + second_log.read_text()


async def test_a_broker_restart_mid_transaction_is_survived_with_every_position_scored_exactly_once(kafka, tmp_path):
    name = unique("eos-restart")
    topics = topics_for(name)
    # A long interval: the known point below (everything scored, nothing committed) lasts 10 s.
    config = write_config(tmp_path, bootstrap=kafka, pipeline="eosrestart", extra=exactly_once(10_000), **topics)
    events = [(e.key, e.value) for e in demo_events(3000, seed=34)]
    log = tmp_path / "worker.log"

    with running_worker(config, log, ready_text="transactions open for ") as worker:
        await produce_raw(kafka, topics["input_topic"], bad_events(20) + events[:1000])
        # Known point: the first 1,000 outputs sent in transactions still open when the broker goes.
        await until_sent_and_none_committed(kafka, topics["output_topic"], 1000)
        await asyncio.to_thread(restart_broker)
        await produce_raw(kafka, topics["input_topic"], events[1000:])
        await exactly_once_outputs(kafka, topics, 3020, letters=20, within_s=180)
        assert worker.poll() is None, f"the worker died with the broker:\n{log.read_text()[-3000:]}"
    assert "stopped on an error" not in log.read_text()


async def test_a_worker_paused_past_its_session_is_fenced_and_commits_nothing(kafka, tmp_path):
    name = unique("eos-zombie")
    topics = topics_for(name)
    app = unique("eos-zombie-app")
    # The same group for both; the first commits on its own only every 30 s (the longest interval a
    # transaction may stay open), so its transactions are still open at the pause.
    (tmp_path / "slow").mkdir()
    (tmp_path / "fast").mkdir()
    settings = {"bootstrap": kafka, "pipeline": "zombie", "app_id": app, **topics}
    slow = write_config(tmp_path / "slow", extra=exactly_once(30_000), **settings)
    fast = write_config(tmp_path / "fast", extra=exactly_once(200), **settings)
    events = list(demo_events(3000, seed=33))
    zombie_log, owner_log = tmp_path / "zombie.log", tmp_path / "owner.log"

    with running_worker(slow, zombie_log, ready_text="transactions open for ") as zombie:
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events[:1500]])
        # Known point: the zombie scored the first half, in transactions still open.
        await until_sent_and_none_committed(kafka, topics["output_topic"], 1500)
        zombie.send_signal(signal.SIGSTOP)
        try:
            with running_worker(fast, owner_log, ready_text="transactions open for ") as owner:
                await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events[1500:]])
                await exactly_once_outputs(kafka, topics, len(events))
                zombie.send_signal(signal.SIGCONT)
                wait_for_zombie(zombie, zombie_log)
                # Whatever the zombie still held changed nothing a read_committed reader sees.
                await exactly_once_outputs(kafka, topics, len(events))
                assert owner.poll() is None
        finally:
            zombie.send_signal(signal.SIGCONT)
    assert "fenced" in zombie_log.read_text()


def wait_for_zombie(zombie: subprocess.Popen[bytes], log: Path) -> None:
    """Until the resumed worker learned it was fenced (and stopped)."""
    try:
        zombie.wait(timeout=90)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the resumed worker did not stop:\n{log.read_text()[-3000:]}") from exc
    assert zombie.returncode != 0
    assert "fenced by a newer producer" in log.read_text()
