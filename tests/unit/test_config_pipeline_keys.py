"""The pipeline keys that decide where outputs go and what they carry: the consumer group,
dead-letter copies, headers."""

from __future__ import annotations

import pytest

from app.config import dead_letters_too_big, load_config
from tests.unit.test_config import GOOD, error_for, write


def test_the_consumer_group_is_named_after_the_app_and_the_pipeline(tmp_path):
    # Two deployments that both name a pipeline "p" must not share a group (and its offsets).
    (pipeline,) = load_config(write(tmp_path, GOOD), environ={}).pipelines
    assert pipeline.group_id == "t.p"
    other = GOOD.replace('id = "t"', 'id = "staging"')
    (pipeline,) = load_config(write(tmp_path, other), environ={}).pipelines
    assert pipeline.group_id == "staging.p"


def test_the_consumer_group_can_be_named_explicitly_for_a_migration(tmp_path):
    text = GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\ngroup_id = "sluice-p"')
    (pipeline,) = load_config(write(tmp_path, text), environ={}).pipelines
    assert pipeline.group_id == "sluice-p"


def test_dead_letter_copies_and_headers_have_defaults(tmp_path):
    (pipeline,) = load_config(write(tmp_path, GOOD), environ={}).pipelines
    assert pipeline.dead_letter_copy_bytes == 65536
    assert pipeline.headers == "all"


@pytest.mark.parametrize(("value", "policy"), [("false", "none"), ("true", "all"), ('["trace-id"]', ("trace-id",))])
def test_headers_are_all_none_or_a_list_of_names(tmp_path, value, policy):
    text = GOOD.replace('dead_letter_topic = "dlq"', f'dead_letter_topic = "dlq"\nheaders = {value}')
    (pipeline,) = load_config(write(tmp_path, text), environ={}).pipelines
    assert pipeline.headers == policy


@pytest.mark.parametrize("value", ['"all"', "[1]", '[""]'])
def test_a_bad_headers_value_names_the_key(tmp_path, value):
    message = error_for(
        tmp_path, GOOD.replace('dead_letter_topic = "dlq"', f'dead_letter_topic = "dlq"\nheaders = {value}')
    )
    assert "pipelines.p.headers" in message


def test_a_dead_letter_copy_too_small_to_be_useful_is_an_error(tmp_path):
    text = GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\ndead_letter_copy_bytes = 10')
    assert "pipelines.p.dead_letter_copy_bytes" in error_for(tmp_path, text)


def test_dead_letters_must_fit_the_dead_letter_topic(tmp_path):
    text = GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\ndead_letter_copy_bytes = 600000')
    (pipeline,) = load_config(write(tmp_path, text), environ={}).pipelines
    problem = dead_letters_too_big(pipeline, {"dlq": 1048588})
    assert problem is not None
    assert "pipelines.p.dead_letter_copy_bytes" in problem and "max.message.bytes 1048588" in problem
    assert dead_letters_too_big(pipeline, {"dlq": 4 * 1048588}) is None
    (default,) = load_config(write(tmp_path, GOOD), environ={}).pipelines
    assert dead_letters_too_big(default, {"dlq": 1048588}) is None


def test_delivery_is_at_least_once_unless_the_file_says_exactly_once(tmp_path):
    (pipeline,) = load_config(write(tmp_path, GOOD), environ={}).pipelines
    assert pipeline.delivery == "at_least_once"
    text = GOOD.replace(
        'dead_letter_topic = "dlq"',
        'dead_letter_topic = "dlq"\ndelivery = "exactly_once"\ntransaction_interval_ms = 250',
    )
    (pipeline,) = load_config(write(tmp_path, text), environ={}).pipelines
    assert (pipeline.delivery, pipeline.transaction_interval_ms) == ("exactly_once", 250.0)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            'delivery = "exactly-once"',
            "key 'pipelines.p.delivery' has value 'exactly-once': expected one of ['at_least_once', 'exactly_once']",
        ),
        (
            'delivery = "exactly_once"\ntransaction_interval_ms = 0',
            "key 'pipelines.p.transaction_interval_ms' has value 0: expected a number from 1 to 30,000",
        ),
        ("transaction_interval_ms = 100", "key 'pipelines.p.transaction_interval_ms' would be ignored"),
    ],
)
def test_a_bad_delivery_setting_names_the_key_the_value_and_what_was_expected(tmp_path, lines, message):
    text = GOOD.replace('dead_letter_topic = "dlq"', f'dead_letter_topic = "dlq"\n{lines}')
    assert message in error_for(tmp_path, text)


def test_exactly_once_needs_a_single_input_topic(tmp_path):
    text = GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\ndelivery = "exactly_once"')
    text = text.replace('input_topics = ["in"]', 'input_topics = ["in", "in2"]')
    assert "key 'pipelines.p.input_topics' has value ['in', 'in2']: expected a single input topic" in error_for(
        tmp_path, text
    )
