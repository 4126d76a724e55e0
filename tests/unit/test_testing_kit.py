"""The test kit users score their own model and config with (``app.testing``, ``streams.testing``):
the worker's pipeline, built from a config file, over given events, with no broker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from app.config import load_config
from app.testing import Event, score, score_async
from models.loading import load_model
from models.spec import ModelSpec
from streams.errors import ConfigError, ModelLoadError
from streams.records import OutputRecord
from streams.testing import CollectingSink, EventSource

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "config" / "sluice.toml"


def transaction(i: int, **fields: object) -> dict[str, object]:
    rng = np.random.default_rng(i)
    return {"id": f"tx-{i}", "features": rng.normal(size=32).round(4).tolist(), **fields}


def eager(module: nn.Module, events: list[dict[str, object]]) -> list[float]:
    with torch.no_grad():
        return module(torch.tensor([e["features"] for e in events], dtype=torch.float32)).reshape(-1).tolist()


def test_the_demo_config_scores_given_events_with_its_model():
    events = [transaction(i) for i in range(40)]
    out = score(DEMO_CONFIG, "fraud", [Event(e, key=f"acct-{i % 3}") for i, e in enumerate(events)], environ={})
    assert [p["id"] for p in out.predictions] == [e["id"] for e in events]
    assert {(p["model"], p["model_version"]) for p in out.predictions} == {("fraud-mlp", "2")}
    expected = eager(load_model(ModelSpec(demo="fraud-mlp")).module, events)
    assert [p["prediction"] for p in out.predictions] == pytest.approx(expected, abs=1e-6)
    assert [p["source"] for p in out.predictions][:2] == [
        {"topic": "transactions", "partition": 0, "offset": 0},
        {"topic": "transactions", "partition": 0, "offset": 1},
    ]
    assert out.dead_letters == []
    assert [r.key for r in out.records][:4] == [b"acct-0", b"acct-1", b"acct-2", b"acct-0"]


def test_a_malformed_event_is_a_dead_letter_with_its_reason_and_the_rest_are_scored():
    wrong_shape = {"id": "short", "features": [0.5] * 31}
    events = [transaction(0), b'{"id": "tx-1", "features": [', transaction(2), wrong_shape, transaction(4)]
    out = score(DEMO_CONFIG, "fraud", events, environ={})
    assert list(out.scores()) == ["tx-0", "tx-2", "tx-4"]
    assert [(d["error"], d["source"]["offset"]) for d in out.dead_letters] == [("InvalidJSON", 1), ("WrongShape", 3)]
    assert out.dead_letters[1]["reason"] == "field 'features' has shape [31], expected [32]"
    assert out.dead_letters[0]["value"] == '{"id": "tx-1", "features": ['


STATEFUL = """
[app]
id = "kit"
torch_threads = 1

[pipelines.spend]
input_topics = ["payments"]
output_topic = "scores"
dead_letter_topic = "payments-dead-letters"
emit_features = true

[pipelines.spend.model]
demo = "fraud-mlp"

[pipelines.spend.features]
id_field = "id"
inputs = [{ field = "features", shape = [32] }]

[pipelines.spend.state]
ttl_s = 3600
STORE
[pipelines.spend.state.features]
spend = { kind = "sum", field = "amount", window_s = 3600 }
gap = { kind = "since_previous" }
"""


@pytest.mark.parametrize("store", ["memory", "rocksdb", "key_field"])
def test_a_per_key_feature_is_computed_from_the_earlier_events_of_the_key(tmp_path, store):
    settings = {"memory": "", "rocksdb": 'store = "rocksdb"', "key_field": 'key_field = "account"'}[store]
    config = tmp_path / "sluice.toml"
    config.write_text(STATEFUL.replace("STORE", settings))
    payments = [("a", 1.0), ("b", 10.0), ("a", 2.0), ("a", 4.0), ("b", 20.0)]
    events = [
        # Keyed by the record key, or (key_field) by the event's account field, the record unkeyed.
        Event(
            transaction(i, amount=amount, account=account),
            key=None if store == "key_field" else account,
            timestamp=1_000_000 + 1_000 * i,
        )
        for i, (account, amount) in enumerate(payments)
    ]
    out = score(config, "spend", [*events, Event(transaction(9, amount=1.0))], environ={})
    # spend: the key's amounts in the hour before the event; gap: seconds since the key's previous event.
    assert {p["id"]: p["features"] for p in out.predictions} == {
        "tx-0": {"spend": 0.0, "gap": 0.0},
        "tx-1": {"spend": 0.0, "gap": 0.0},
        "tx-2": {"spend": 1.0, "gap": 2.0},
        "tx-3": {"spend": 3.0, "gap": 1.0},
        "tx-4": {"spend": 10.0, "gap": 3.0},
    }
    [keyless] = out.dead_letters
    assert keyless["error"] == "MissingKey" and keyless["source"]["offset"] == 5
    assert not (tmp_path / "state").exists(), "a rocksdb store is the kit's own, never the worker's folder"


class Scorer(nn.Module):
    """A user's model: a weighted sum of the features."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = nn.Linear(32, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.weights(features)


@pytest.mark.parametrize("saved_as", ["exported", "state_dict"])
def test_a_users_own_model_file_is_scored(tmp_path, saved_as):
    torch.manual_seed(7)
    model = Scorer().eval()
    if saved_as == "exported":
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, (torch.zeros(8, 32),), dynamic_shapes=({0: batch},))
        torch.export.save(program, tmp_path / "mine.pt2")
        text = DEMO_CONFIG.read_text().replace('\ndemo = "fraud-mlp"\n', '\nexported = "mine.pt2"\nversion = "7"\n')
        config, override = tmp_path / "sluice.toml", None
        config.write_text(text)  # the model's path is relative to the config file, as the worker reads it
    else:
        torch.save(model.state_dict(), tmp_path / "scorer.pt")
        config, override = DEMO_CONFIG, f"{__name__}:Scorer={tmp_path / 'scorer.pt'}"
    events = [transaction(i) for i in range(10)]
    out = score(config, "fraud", events, model=override, environ={})
    assert [p["prediction"] for p in out.predictions] == pytest.approx(eager(model, events), abs=1e-6)
    assert out.predictions[0]["model_version"] == ("7" if saved_as == "exported" else "1")


def test_a_bad_config_raises_the_workers_config_error(tmp_path):
    config = tmp_path / "sluice.toml"
    config.write_text(DEMO_CONFIG.read_text().replace("max_batch_size = 512", "max_batch_size = 0"))
    with pytest.raises(ConfigError) as raised:
        score(config, "fraud", [transaction(0)], environ={})
    with pytest.raises(ConfigError) as by_the_loader:
        load_config(config, environ={})
    assert str(raised.value) == str(by_the_loader.value)
    assert str(raised.value).startswith(f"{config}: key 'pipelines.fraud.max_batch_size' has value 0")
    with pytest.raises(ConfigError, match="no pipeline named 'nope'"):
        score(DEMO_CONFIG, "nope", [], environ={})


def test_a_model_that_does_not_fit_raises_the_workers_line_naming_the_config_key(tmp_path):
    config = tmp_path / "sluice.toml"
    config.write_text(DEMO_CONFIG.read_text().replace("shape = [32]", "shape = [31]"))
    with pytest.raises(ModelLoadError) as raised:
        score(config, "fraud", [transaction(0)], environ={})
    assert str(raised.value).startswith(f"{config}: key 'pipelines.fraud.model': demo model 'fraud-mlp' does not fit")


async def test_an_async_test_awaits_the_same_run():
    out = await score_async(DEMO_CONFIG, None, [transaction(0), None], environ={})
    assert list(out.scores()) == ["tx-0"] and [d["error"] for d in out.dead_letters] == ["Tombstone"]


async def test_the_event_source_numbers_offsets_per_partition_and_the_sink_reads_back_json():
    source = EventSource([Event({"a": 1}, partition=1), {"a": 2}, Event(b"x", partition=1, topic="other")], topic="in")
    assert [(r.topic, r.partition, r.offset, r.value) for r in source.records] == [
        ("in", 1, 0, b'{"a":1}'),
        ("in", 0, 0, b'{"a":2}'),
        ("other", 1, 0, b"x"),
    ]
    assert len(await source.next_batch(2)) == 2 and source.backlog() == 1 and not source.exhausted
    assert len(await source.next_batch(2)) == 1 and source.exhausted
    sink = CollectingSink()
    await (await sink.send([OutputRecord("t", None, b'{"x": 1}'), OutputRecord("u", None, b"{}")]))
    assert sink.decoded("t") == [{"x": 1}]
