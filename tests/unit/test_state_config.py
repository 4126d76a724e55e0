"""``[pipelines.NAME.state]`` and the model inputs that name its features: what a good table
gives, and one line naming the file, the key, the value and what was expected for a bad one."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import load_config
from streams.features.spec import LastEvents, SincePrevious, Window
from tests.unit.test_config import GOOD, error_for, write

STATEFUL = (
    GOOD.replace(
        'inputs = [{ field = "features", shape = [32] }]',
        'inputs = [{ feature = "spend" }, { field = "features", shape = [32] }, { feature = "recent" }]',
    )
    + """
[pipelines.p.state]
ttl_s = 60
history_events = 8
[pipelines.p.state.features]
spend = { kind = "sum", field = "amount", window_s = 3600 }
recent = { kind = "last", n = 4, fields = ["amount", "country"], mask = true, include_current = true }
gap = { kind = "since_previous" }
"""
)


def test_a_state_table_declares_features_the_model_takes_in_its_order(tmp_path):
    p = load_config(write(tmp_path, STATEFUL), environ={}).pipeline("p")
    assert p.state is not None
    assert p.state.ttl_ms == 60_000 and p.state.capacity == 8 and p.state.fields == ("amount", "country")
    assert p.state.features == (
        Window("spend", "sum", "amount", 3_600_000),
        LastEvents("recent", 4, ("amount", "country"), mask=True, include_current=True),
        SincePrevious("gap"),
    )
    assert [(i.name, i.shape, i.from_state) for i in p.inputs] == [
        ("spend", (), True),
        ("features", (32,), False),
        ("recent", (4, 3), True),
    ]
    assert [f.field for f in p.schema.inputs] == ["features", "amount", "country"]
    assert p.changelog_topic == "t.p-state-changelog"


def test_a_rocksdb_store_keeps_its_databases_relative_to_the_config_file(tmp_path):
    p = load_config(write(tmp_path, STATEFUL.replace("history_events = 8", 'store = "rocksdb"')), environ={}).pipeline(
        "p"
    )
    assert p.state is not None
    assert (p.state.store, p.state.directory, p.state.cache_keys) == ("rocksdb", tmp_path / "state", 100_000)
    where = STATEFUL.replace("history_events = 8", 'store = "rocksdb"\ndirectory = "/var/lib/sluice"\ncache_keys = 5')
    p = load_config(write(tmp_path, where), environ={}).pipeline("p")
    assert p.state is not None and (p.state.directory, p.state.cache_keys) == (Path("/var/lib/sluice"), 5)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('{ feature = "recent" }', '{ feature = "nope" }'),
            "'pipelines.p.features.inputs[2].feature' has value 'nope'",
        ),
        (('kind = "sum"', 'kind = "median"'), "'pipelines.p.state.features.spend.kind' has value 'median'"),
        ((", window_s = 3600", ""), "'pipelines.p.state.features.spend.window_s' is missing"),
        (("ttl_s = 60", "ttl_s = 0"), "'pipelines.p.state.ttl_s' has value 0"),
        (("n = 4,", "n = 0,"), "'pipelines.p.state.features.recent.n' has value 0"),
        (('{ kind = "since_previous" }', '{ kind = "since_previous", include_current = true }'), "include_current"),
        (("gap = {", "gap = { oops = 1, "), "unknown key 'pipelines.p.state.features.gap.oops'"),
        (('input_topics = ["in"]', 'input_topics = ["in", "in2"]'), "a single input topic"),
        (("history_events = 8", 'store = "redis"'), "'pipelines.p.state.store' has value 'redis'"),
        (("ttl_s = 60", "ttl_s = inf"), "'pipelines.p.state.ttl_s' has value inf"),
        (("ttl_s = 60", "ttl_s = 1e17"), "a number of seconds from 0.001"),
        (("window_s = 3600", "window_s = 0.0001"), "'pipelines.p.state.features.spend.window_s' has value 0.0001"),
        (("history_events = 8", "history_events = 1000000000"), "an integer from 1 to 100,000"),
        (('fields = ["amount", "country"]', 'fields = ["amount", "amount"]'), "distinct event field names"),
        (("ttl_s = 60", 'changelog_topic = "out"'), "'pipelines.p.state.changelog_topic' has value 'out'"),
        (("history_events = 8", 'store = "rocksdb"\ncache_keys = 0'), "'pipelines.p.state.cache_keys' has value 0"),
        (("history_events = 8", "directory = 3"), "'pipelines.p.state.directory' has value 3"),
        (("ttl_s = 60", 'changelog_topic = "../up"'), "'pipelines.p.state.changelog_topic' has value '../up'"),
        (
            ("ttl_s = 60", "key_field = 3"),
            "'pipelines.p.state.key_field' has value 3: expected the name of the event field",
        ),
        (("ttl_s = 60", 'key_field = " "'), "'pipelines.p.state.key_field' has value ' '"),
        (("ttl_s = 60", 'repartition_topic = "r"'), "no repartition topic: set key_field"),
        (
            ("ttl_s = 60", 'key_field = "a"\nrepartition_topic = "in"'),
            "'pipelines.p.state.repartition_topic' has value 'in'",
        ),
        (("ttl_s = 60", 'key_field = "a"\nrepartition_topic = "a/b"'), "a Kafka topic name"),
        (("ttl_s = 60", 'key_field = "a"\nrepartition_topic = "out-backfill"'), "has value 'out-backfill'"),
    ],
)
def test_a_bad_state_table_names_the_key_and_what_was_expected(tmp_path, change, expected):
    old, new = change
    assert old in STATEFUL
    assert expected in error_for(tmp_path, STATEFUL.replace(old, new, 1))


def test_a_key_field_puts_a_rekeying_stage_ahead_and_the_pipeline_reads_its_repartition_topic(tmp_path):
    p = load_config(write(tmp_path, STATEFUL.replace("ttl_s = 60", 'ttl_s = 60\nkey_field = "account"')), environ={})
    pipeline = p.pipeline("p")
    assert pipeline.rekey is not None
    assert (pipeline.rekey.field, pipeline.rekey.source_topic) == ("account", "in")
    assert pipeline.rekey.topic == "t.p-repartition" and pipeline.rekey.group_id == "t.p-rekey"
    assert pipeline.input_topics == ("t.p-repartition",) and pipeline.source_topics == ("in",)
    assert pipeline.changelog_topic == "t.p-rekeyed-state-changelog", "never the record-keyed state's"
    assert "in" in pipeline.topics
    named = STATEFUL.replace("ttl_s = 60", 'ttl_s = 60\nkey_field = "account"\nrepartition_topic = "by-account"')
    assert load_config(write(tmp_path, named), environ={}).pipeline("p").input_topics == ("by-account",)
    assert load_config(write(tmp_path, STATEFUL), environ={}).pipeline("p").rekey is None
    # Re-keying is transactional in either delivery mode, so its interval may be set in both.
    often = named.replace('input_topics = ["in"]', 'input_topics = ["in"]\ntransaction_interval_ms = 20')
    assert load_config(write(tmp_path, often), environ={}).pipeline("p").transaction_interval_ms == 20


REKEYED = STATEFUL.replace("ttl_s = 60", 'ttl_s = 60\nkey_field = "account"')


def test_a_rekeyed_pipeline_dead_lettering_late_events_needs_a_budget_past_its_transactions(tmp_path):
    late = REKEYED.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\nlate_events = "dead_letter"')
    assert "'pipelines.p.late_events' has value 'dead_letter'" in error_for(tmp_path, late)
    roomy = late.replace('late_events = "dead_letter"', 'late_events = "dead_letter"\nlatency_budget_ms = 500')
    assert load_config(write(tmp_path, roomy), environ={}).pipeline("p").late_events == "dead_letter"
    # A budget that is no number is named as such (compared before validation, it raised TypeError).
    wrong = late.replace('late_events = "dead_letter"', 'late_events = "dead_letter"\nlatency_budget_ms = "big"')
    assert "'pipelines.p.latency_budget_ms' has value 'big'" in error_for(tmp_path, wrong)


def test_a_rekeyed_pipelines_topic_group_and_metrics_name_are_its_own(tmp_path):
    second = REKEYED[REKEYED.index("[pipelines.p]") :].replace("pipelines.p", "pipelines.q")
    shared = REKEYED + second.replace('output_topic = "out"', 'output_topic = "out2"').replace(
        "ttl_s = 60", 'ttl_s = 60\nrepartition_topic = "t.p-repartition"'
    )
    assert "'t.p-repartition': expected a topic of its own (pipeline 'q' uses it)" in error_for(tmp_path, shared)
    named = REKEYED + second.replace("pipelines.q", "pipelines.p-rekey").replace('key_field = "account"', "")
    assert "pipeline 'p-rekey' has the name of pipeline 'p''s re-keying stage" in error_for(tmp_path, named)
    grouped = REKEYED + GOOD[GOOD.index("[pipelines.p]") :].replace("pipelines.p", "pipelines.r").replace(
        'input_topics = ["in"]', 'input_topics = ["in"]\ngroup_id = "t.p-rekey"'
    )
    assert "consumer group 't.p-rekey' is another pipeline's group_id" in error_for(tmp_path, grouped)


def test_a_feature_input_without_a_state_table_says_so(tmp_path):
    text = GOOD.replace('[{ field = "features", shape = [32] }]', '[{ feature = "history" }]')
    assert "there is no [pipelines.p.state] table" in error_for(tmp_path, text)


def test_a_state_field_that_is_also_a_vector_input_is_refused(tmp_path):
    text = STATEFUL.replace('fields = ["amount", "country"]', 'fields = ["amount", "features"]')
    assert "field 'features' is a model input of shape [32]" in error_for(tmp_path, text)


def test_emitting_features_needs_per_key_features(tmp_path):
    text = GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\nemit_features = true')
    assert "'pipelines.p.emit_features' has value True" in error_for(tmp_path, text)


def test_a_state_too_big_for_the_changelog_is_refused_at_start_naming_the_key(tmp_path):
    from app.config import state_too_big

    p = load_config(write(tmp_path, STATEFUL.replace("history_events = 8", "history_events = 70000")), environ={})
    pipeline = p.pipeline("p")
    problem = state_too_big(pipeline, 1_048_588)
    assert problem is not None and "pipelines.p.state.history_events" in problem
    assert state_too_big(load_config(write(tmp_path, STATEFUL), environ={}).pipeline("p"), 1_048_588) is None
