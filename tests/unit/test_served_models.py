"""A pipeline's models changed by decisions (app.served_models, streams.flow.role_changes), with
the real models, roles and pipeline of a worker and a decisions log kept in memory: what a worker
applies at start, what it writes and applies when asked, what it applies from other workers, and
the roll-back it records when its canary breaks a limit."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from app.build import build_batcher, build_pipeline
from app.config import load_config
from app.config.pipeline_toml import demo_inputs, write_pipeline_config
from app.decision_log import Withdrawn
from app.demo_events import demo_events
from app.model_decisions import Decision
from app.model_roles import build_roles, build_shadows
from app.served_models import ServedModels
from models.spec import WEIGHTS_DIR
from streams.errors import DeliveryFailed, SwapRejected
from streams.flow.driver import Driver
from streams.flow.model_stats import ModelBook
from streams.records import InputRecord
from streams.testing import CollectingSink
from tests.fakes import ListSource, RecordingProgress, until

CANARY = 'canary = { demo = "fraud-mlp", version = "c2", fraction = 0.5 }'
# On a thread: these tests are about decisions; a shadow's own process (the default, tested in
# tests/integration/test_model_roles.py) would add a process start and stop to each.
SHADOW = 'shadows.cand = { demo = "fraud-mlp", version = "s1", isolation = "thread" }'
FAULTY = "tests.integration.faulty_models:SwitchableFraudMLP"


class MemoryLog:
    """The decisions topic of one pipeline, in memory: what was there at start, what arrives, what
    this worker writes (read back by it, as from Kafka)."""

    topic = "app.model-decisions"

    def __init__(self, latest: Decision | None = None, *, refuses: bool = False) -> None:
        self.latest, self.refuses = latest, refuses
        self.written: list[Decision] = []
        self.incoming: asyncio.Queue[Decision | Withdrawn] = asyncio.Queue()
        self.asked = self.applied = 0
        # Written by another worker just before this one's next write: the topic holds it first.
        self.written_just_before: list[Decision] = []

    async def start(self) -> Decision | None:
        return self.latest

    async def arrived(self) -> list[Decision | Withdrawn]:
        # Asked again only once what it handed out last time was applied: the count of those.
        self.applied = self.asked
        self.asked += 1
        return [await self.incoming.get()]

    async def write(self, decision: Decision) -> None:
        if self.refuses:
            raise DeliveryFailed("app.model-decisions did not take the record within 30s: KafkaTimeoutError()")
        for other in self.written_just_before:
            self.incoming.put_nowait(other)
        self.written_just_before = []
        self.written.append(decision)
        self.incoming.put_nowait(decision)

    async def stop(self) -> None:
        return None


def config_of(tmp_path: Path, roles: str = f"{CANARY}\n{SHADOW}"):
    (tmp_path / "models").mkdir(exist_ok=True)
    path = write_pipeline_config(
        tmp_path / "sluice.toml",
        bootstrap="127.0.0.1:9092",
        pipeline="p",
        input_topic="in",
        output_topic="out",
        dead_letter_topic="dlq",
        demo="fraud-mlp",
        inputs=demo_inputs("fraud-mlp"),
        extra=f'model_dirs = ["{tmp_path / "models"}"]\n{roles}',
    )
    return load_config(path, environ={})


async def serving(tmp_path: Path, log: MemoryLog, roles: str = f"{CANARY}\n{SHADOW}"):
    """A worker's pipeline of ``roles`` built as the worker builds it, around its ``ServedModels``."""
    config = config_of(tmp_path, roles)
    p = config.pipeline("p")
    models = ServedModels(config, p, by="sluice-p@w1 on host", decisions=log)  # type: ignore[arg-type]
    built = await models.load()
    assert models.champion is not None and models.cost is not None
    book, sink = ModelBook(), CollectingSink()
    roles_ = build_roles(built, models.champion, models.role_runners, "live", book, models.canary_rolled_back)
    shadows = build_shadows(built, models.role_runners, sink, book)
    pipeline = build_pipeline(built, roles_, sink, "live", shadows=shadows)
    driver = Driver(
        ListSource([], bounded=False), pipeline, build_batcher(built, models.cost, "live"), RecordingProgress()
    )
    models.attach(driver)
    return models, driver, sink


async def stopped(models: ServedModels) -> None:
    """Stop as the worker does: the shadows finish what they were offered, then every model closes."""
    models.stop_following()
    assert models.driver is not None
    for shadow in models.driver.pipeline.shadows:
        await shadow.drain()
    await models.aclose()


def records(n: int, seed: int = 5) -> list[InputRecord]:
    return [InputRecord("in", 0, i, 1_000, e.key, e.value) for i, e in enumerate(demo_events(n, seed=seed))]


def served_by(sink: CollectingSink) -> set[tuple[str, str | None]]:
    return {(o["model_version"], o.get("role")) for o in sink.decoded("out")}


async def test_promoting_the_canary_writes_the_decision_then_serves_its_model_alone(tmp_path):
    log = MemoryLog()
    models, driver, sink = await serving(tmp_path, log)
    try:
        await driver.pipeline.process(records(200))
        assert served_by(sink) == {("2", None), ("c2", "canary")}
        view = await models.decide({"promote": "canary", "reason": "clean for a week"})
        (written,) = log.written
        assert (written.what, written.model, written.version, written.reason) == (
            "promote canary",
            "fraud-mlp",
            "c2",
            "clean for a week",
        )
        assert written.by == "sluice-p@w1 on host"
        assert (view["model"], view["version"], view["roles"]["canary"]) == ("fraud-mlp", "c2", None)
        assert view["decision"]["action"] == "promote" and view["decisions_topic"] == "app.model-decisions"
        await until(lambda: log.applied == 1, "its own decision read back")
        assert models.champion is driver.pipeline.roles.champion, "reading it back changed nothing"
        sink.records.clear()
        await driver.pipeline.process(records(200, seed=6))
        assert served_by(sink) == {("c2", None)}, "every output from the champion, the canary's model"
        # Asked again (another worker named on the command line): in effect, nothing written.
        assert (await models.decide({"promote": "canary"}))["version"] == "c2"
        assert len(log.written) == 1
        with pytest.raises(SwapRejected, match="pipeline p has no canary to roll back: it was promoted"):
            await models.decide({"rollback": "canary"})
        with pytest.raises(SwapRejected, match=r"pipeline p has no shadow 'x' \(its shadows: \['cand'\]\)"):
            await models.decide({"promote": "shadow:x"})
    finally:
        await stopped(models)


async def test_promoting_a_shadow_lets_it_go_and_its_model_serves(tmp_path):
    log = MemoryLog()
    models, driver, _ = await serving(tmp_path, log, roles=SHADOW)
    try:
        view = await models.decide({"promote": "shadow:cand"})
        assert (view["model"], view["version"], view["roles"]["shadows"]) == ("cand", "s1", [])
        assert driver.pipeline.shadows == [] and models.role_runners.shadows == []
        with pytest.raises(SwapRejected, match="no canary"):
            await models.decide({"promote": "canary"})
        with pytest.raises(SwapRejected, match=r"pipeline p has no canary \(\[pipelines.p.canary\]\)"):
            await models.decide({"rollback": "canary"})
    finally:
        await stopped(models)


async def test_a_worker_started_after_a_promotion_serves_the_promoted_model(tmp_path, caplog):
    promoted = Decision("p", "promote", "canary", "fraud-mlp", "c2", 1_700_000_000_000, "sluice-p@w0 on other")
    models, driver, sink = await serving(tmp_path, MemoryLog(promoted))
    try:
        assert (driver.pipeline.runner.version, driver.pipeline.roles.canary) == ("c2", None)
        assert models.role_runners.canary is None, "a promoted canary is not loaded twice"
        await driver.pipeline.process(records(100))
        assert served_by(sink) == {("c2", None)}
    finally:
        await stopped(models)


async def test_a_decision_from_another_worker_is_applied_between_batches(tmp_path):
    log = MemoryLog()
    models, driver, sink = await serving(tmp_path, log)
    try:
        rollback = Decision("p", "rollback", "canary", "fraud-mlp", "c2", 1_700_000_000_000, "w2", reason="slow")
        log.incoming.put_nowait(rollback)
        await until(lambda: driver.pipeline.roles.canary is None, "the canary stopped")
        assert driver.pipeline.roles.rolled_back == "slow"
        await until(lambda: models.role_runners.canary is None, "its model let go")
        await driver.pipeline.process(records(100))
        assert served_by(sink) == {("2", None)}
        assert models.last == rollback and not log.written, "applied, not written again"
    finally:
        await stopped(models)


async def test_a_swap_decision_the_endpoint_would_refuse_is_ignored_and_nothing_is_loaded(tmp_path, caplog):
    log = MemoryLog()
    models, driver, _ = await serving(tmp_path, log)
    outside = str(WEIGHTS_DIR / "fraud-mlp.pt")
    hostile = Decision(
        "p", "swap", "champion", "x", "9", 1_700_000_000_000, "w9", request={"state_dict": outside, "version": "9"}
    )
    try:
        with caplog.at_level(logging.WARNING):
            log.incoming.put_nowait(hostile)
            await until(lambda: log.applied == 1, "read")
            await until(lambda: "ignored" in caplog.text, "the log line")
        assert driver.pipeline.runner.version == "2"
        line = next(r.getMessage() for r in caplog.records if "ignored" in r.getMessage())
        assert "decision to swap champion (x v9, by w9" in line and "outside the folders models may be loaded" in line
    finally:
        await stopped(models)


async def test_a_decision_that_cannot_be_written_changes_nothing(tmp_path):
    models, driver, _ = await serving(tmp_path, MemoryLog(refuses=True))
    try:
        with pytest.raises(SwapRejected) as refused:
            await models.decide({"demo": "fraud-mlp", "version": "7"})
        assert refused.value.status == 503 and "nothing changed" in str(refused.value)
        assert driver.pipeline.runner.version == "2" and driver.pipeline.roles.canary is not None
    finally:
        await stopped(models)


async def test_a_canary_that_breaks_its_limit_is_rolled_back_for_the_group(tmp_path):
    flag = tmp_path / "broken"
    canary = (
        f'canary = {{ class = "{FAULTY}", state_dict = "{WEIGHTS_DIR / "fraud-mlp.pt"}", version = "bad", '
        f'fraction = 1.0, max_error_rate = 0.1, min_batches = 2, init_args = {{ broken_flag = "{flag}" }} }}'
    )
    log = MemoryLog()
    models, driver, sink = await serving(tmp_path, log, roles=canary)
    try:
        flag.touch()  # after the warm-up: the canary loads, then fails every batch
        for seed in range(3):
            await driver.pipeline.process(records(50, seed=seed))
        await until(lambda: bool(log.written), "the roll-back written")
        (written,) = log.written
        assert (written.what, written.version) == ("rollback canary", "bad")
        assert written.reason is not None and "max_error_rate" in written.reason
        await until(lambda: models.serving.canary is None, "applied here")
        assert served_by(sink) == {("2", None)}, "the champion scored what the canary failed"
        assert len(sink.decoded("out")) == 150
    finally:
        await stopped(models)


async def test_decisions_withdrawn_leave_the_worker_serving_as_it_does(tmp_path, caplog):
    log = MemoryLog()
    models, driver, _ = await serving(tmp_path, log)
    try:
        await models.decide({"rollback": "canary"})
        with caplog.at_level(logging.WARNING):
            log.incoming.put_nowait(Withdrawn("app.model-decisions[0] offset 9"))
            await until(lambda: models.last is None, "withdrawn")
        assert driver.pipeline.roles.canary is None
        assert "its config's models from its next restart" in caplog.text
        assert replace(models.serving, canary=None) == models.serving
    finally:
        await stopped(models)


async def test_the_model_page_shows_every_role_and_the_latest_decision(tmp_path):
    roles = f"{CANARY}\n{SHADOW}\nfallback = {{ constant = 0.0 }}"
    models, _, _ = await serving(tmp_path, MemoryLog(), roles=roles)
    try:
        assert models.view() == {
            "pipeline": "p",
            "model": "fraud-mlp",
            "version": "2",
            "roles": {
                "champion": {"model": "fraud-mlp", "version": "2"},
                "canary": {"model": "fraud-mlp", "version": "c2", "fraction": 0.5},
                "canary_rolled_back": None,
                "fallback": {"model": "constant", "version": "0.0"},
                "shadows": [{"name": "cand", "model": "cand", "version": "s1"}],
                "circuit": "closed",
            },
            "decision": None,
            "decisions_topic": "app.model-decisions",
        }
    finally:
        await stopped(models)


async def test_when_two_workers_decide_at_once_every_one_serves_the_decision_written_last(tmp_path):
    log = MemoryLog()
    models, driver, _ = await serving(tmp_path, log)
    promote = Decision("p", "promote", "shadow", "cand", "s1", 1_700_000_000_000, "w2", shadow="cand")
    log.written_just_before = [promote]
    try:
        await models.decide({"rollback": "canary"})  # its chain does not know the promotion
        await until(lambda: log.applied == 2, "both read back, the other worker's first")
        (rollback,) = log.written
        assert models.last == rollback, "the topic's last record is what serves"
        assert (driver.pipeline.runner.name, driver.pipeline.runner.version) == ("fraud-mlp", "2")
        assert driver.pipeline.roles.canary is None
    finally:
        await stopped(models)
