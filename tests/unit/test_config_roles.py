"""``[pipelines.NAME.canary]``, ``.fallback``, ``.shadows.NAME`` and ``.breaker`` (app/config/roles.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from app.config import load_config
from app.config.roles import MIN_TIMEOUT_S, NO_BUDGET_TIMEOUT_S, derived_timeout_s
from tests.unit.test_config import GOOD, error_for, write


def with_roles(text: str, pipeline_keys: str = "") -> str:
    head, sep, rest = GOOD.partition("[pipelines.p.model]")
    return head + pipeline_keys + "\n" + sep + rest + "\n" + text


def test_a_pipeline_without_roles_has_a_champion_alone_and_a_timeout_from_its_budget(tmp_path):
    (p,) = load_config(write(tmp_path, GOOD), environ={}).pipelines
    assert p.roles.canary is None and p.roles.fallback is None and p.roles.shadows == ()
    assert p.roles.breaker.timeout_s == max(MIN_TIMEOUT_S, 10 * p.latency_budget_ms / 1000)
    assert p.roles.shadow_topic == f"{p.output_topic}-shadow"
    assert p.roles.shadow_topic not in p.topics, "no shadows, no shadow topic to create"


def test_every_role_is_read_with_its_own_keys(tmp_path):
    text = with_roles(
        """
[pipelines.p.canary]
demo = "fraud-mlp"
version = "c2"
fraction = 0.25
max_error_rate = 0.1
max_p99_ms = 40
min_batches = 5

[pipelines.p.fallback]
constant = 0.5

[pipelines.p.shadows.cand]
demo = "fraud-mlp"
version = "s1"
queue_batches = 8
isolation = "thread"
gather_ms = 20
pause_while_champion_scores = false

[pipelines.p.breaker]
timeout_ms = 250
failures = 2
cooldown_ms = 1500
""",
        'shadow_topic = "evidence"\ndecision_threshold = 0.7\n',
    )
    (p,) = load_config(write(tmp_path, text), environ={}).pipelines
    roles = p.roles
    assert roles.canary is not None and roles.canary.fraction == 0.25 and roles.canary.model.version == "c2"
    assert roles.canary.rollback.max_error_rate == 0.1 and roles.canary.rollback.max_p99_s == 0.04
    assert roles.canary.rollback.max_timeout_rate is None and roles.canary.rollback.min_batches == 5
    assert roles.fallback is not None and roles.fallback.constant == 0.5 and roles.fallback.model is None
    (shadow,) = roles.shadows
    assert (shadow.name, shadow.model.version, shadow.queue_batches, shadow.isolation) == ("cand", "s1", 8, "thread")
    assert shadow.gather_ms == 20 and shadow.pause_while_champion_scores is False
    assert (roles.breaker.timeout_s, roles.breaker.failures, roles.breaker.cooldown_s) == (0.25, 2, 1.5)
    assert roles.timeout_set and roles.shadow_topic == "evidence" and roles.decision_threshold == 0.7
    assert "evidence" in p.topics, "the shadow topic is checked and created with the others"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[pipelines.p.canary]\ndemo = "fraud-mlp"\nfraction = 0\n', "'pipelines.p.canary.fraction' has value 0"),
        ('[pipelines.p.canary]\ndemo = "fraud-mlp"\nfraction = 1.5\n', "'pipelines.p.canary.fraction' has value 1.5"),
        ('[pipelines.p.canary]\ndemo = "fraud-mlp"\n', "'pipelines.p.canary.fraction' is missing"),
        ("[pipelines.p.canary]\nfraction = 0.1\n", "must set exactly one of 'demo'"),
        (
            '[pipelines.p.canary]\ndemo = "fraud-mlp"\nfraction = 0.1\nfractoin = 2\n',
            "unknown key 'pipelines.p.canary.fractoin'",
        ),
        ('[pipelines.p.canary]\nexported = "x.pt2"\nfraction = 0.1\n', "'pipelines.p.canary.version'"),
        ('[pipelines.p.canary]\ndemo = "fraud-mlp"\nfraction = 0.1\nmax_error_rate = 2\n', "max_error_rate"),
        ("[pipelines.p.fallback]\nconstant = inf\n", "'pipelines.p.fallback.constant' has value inf"),
        ("[pipelines.p.fallback]\nconstant = nan\n", "'pipelines.p.fallback.constant'"),
        ('[pipelines.p.fallback]\nconstant = "0"\n', "'pipelines.p.fallback.constant'"),
        ('[pipelines.p.shadows]\ncand = "fraud-mlp"\n', "'pipelines.p.shadows.cand' has value 'fraud-mlp'"),
        ('[pipelines.p.shadows.c]\ndemo = "fraud-mlp"\nqueue_batches = 0\n', "queue_batches"),
        ('[pipelines.p.shadows.c]\ndemo = "fraud-mlp"\nisolation = "fork"\n', "'pipelines.p.shadows.c.isolation'"),
        ('[pipelines.p.shadows.c]\ndemo = "fraud-mlp"\ngather_ms = -1\n', "'pipelines.p.shadows.c.gather_ms'"),
        ('[pipelines.p.shadows.c]\ndemo = "fraud-mlp"\ngather_ms = 60000\n', "'pipelines.p.shadows.c.gather_ms'"),
        (
            '[pipelines.p.shadows.c]\ndemo = "fraud-mlp"\npause_while_champion_scores = "no"\n',
            "'pipelines.p.shadows.c.pause_while_champion_scores' has value 'no'",
        ),
        # Names a promotion's decision would carry, and no worker read back (or an empty label).
        ('[pipelines.p.shadows."a\\nb"]\ndemo = "fraud-mlp"\n', "a shadow's name must be 1 to 100 printable"),
        ('[pipelines.p.shadows.""]\ndemo = "fraud-mlp"\n', "a shadow's name must be 1 to 100 printable"),
        ('[pipelines.p.shadows." c"]\ndemo = "fraud-mlp"\n', "a shadow's name must be 1 to 100 printable"),
        ("[pipelines.p.breaker]\ntimeout_ms = 0\n", "'pipelines.p.breaker.timeout_ms' has value 0"),
        ("[pipelines.p.breaker]\nfailures = 0\n", "'pipelines.p.breaker.failures' has value 0"),
        ("[pipelines.p.breaker]\ntimeot_ms = 5\n", "unknown key 'pipelines.p.breaker.timeot_ms'"),
    ],
)
def test_a_wrong_role_key_names_the_key_and_what_it_expects(tmp_path, text, expected):
    assert expected in error_for(tmp_path, with_roles(text))


def test_a_shadow_left_to_its_defaults(tmp_path):
    text = with_roles('[pipelines.p.shadows.c]\ndemo = "fraud-mlp"\n')
    (p,) = load_config(write(tmp_path, text), environ={}).pipelines
    (shadow,) = p.roles.shadows
    assert (shadow.queue_batches, shadow.isolation, shadow.gather_ms) == (4, "process", 100)
    assert shadow.pause_while_champion_scores is True


def test_a_bad_shadow_topic_is_refused(tmp_path):
    assert "'pipelines.p.shadow_topic'" in error_for(tmp_path, with_roles("", 'shadow_topic = "no spaces"\n'))


def test_the_derived_timeout_follows_the_budget():
    assert derived_timeout_s(50) == MIN_TIMEOUT_S
    assert derived_timeout_s(500) == 5.0
    assert derived_timeout_s(math.inf) == NO_BUDGET_TIMEOUT_S


def test_the_shipped_config_documents_every_role_table():
    text = (Path(__file__).parents[2] / "config" / "sluice.toml").read_text()
    for table in ("canary", "shadows.candidate", "fallback", "breaker"):
        assert f"# [pipelines.fraud.{table}]" in text
