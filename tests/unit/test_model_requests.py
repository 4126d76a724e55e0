"""What POST /pipelines/NAME/model may ask (app.model_requests), and the swap-model flags that make
those requests (app.commands.swap_model): one-line refusals, before anything is sent or loaded."""

from __future__ import annotations

import pytest

from app.commands.swap_model import chosen_body, done_line
from app.model_decisions import parse_decision
from app.model_requests import Promote, Rollback, Swap, decided, model_request
from streams.errors import CommandLineError, SwapRejected
from tests.unit.test_decision_rules import pipeline


@pytest.mark.parametrize(
    ("body", "request_"),
    [
        ({"promote": "canary"}, Promote("canary")),
        ({"promote": "shadow:cand", "reason": "AUC +0.02"}, Promote("shadow", "cand", "AUC +0.02")),
        ({"rollback": "canary"}, Rollback()),
        ({"rollback": "canary", "reason": "too many declines"}, Rollback("too many declines")),
    ],
)
def test_promotions_and_roll_backs_are_read(tmp_path, body, request_):
    assert model_request(pipeline(tmp_path), body) == request_


def test_a_swap_keeps_the_request_as_sent_for_the_other_workers_to_check(tmp_path):
    made = model_request(pipeline(tmp_path), {"demo": "fraud-mlp", "version": "7", "name": "seven"})
    assert isinstance(made, Swap)
    assert made.body == {"demo": "fraud-mlp", "version": "7", "name": "seven"}
    assert (made.spec.demo, made.spec.name, made.spec.version) == ("fraud-mlp", "seven", "7")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"promote": "champion"}, 'promote "canary" or "shadow:NAME"'),
        ({"promote": "shadow:"}, 'promote "canary" or "shadow:NAME"'),
        ({"promote": ["canary"]}, 'promote "canary" or "shadow:NAME"'),
        ({"rollback": "shadow:cand"}, "only the canary is rolled back"),
        ({"promote": "canary", "rollback": "canary"}, "unexpected ['rollback']"),
        ({"promote": "canary", "version": "3"}, "unexpected ['version']"),
        ({"promote": "canary", "reason": 42}, "'reason' must be a non-empty string"),
        ({"rollback": "canary", "reason": "x" * 2000}, "at most 1000 characters"),
        # Accepted before, then written as a decision no worker reads back (app.model_decisions).
        ({"rollback": "canary", "reason": "p99 over 80 ms\nand errors"}, "printable text on one line"),
        ({"demo": "fraud-mlp", "version": "7\n"}, "'version' must be printable text"),
        ({"demo": "fraud-mlp", "version": "7", "name": "n" * 2000}, "'name' must be printable text"),
        ({"demo": "fraud-mlp", "version": "v" * 1025}, "'version' must be printable text"),
        (["promote", "canary"], "expected a JSON object"),
    ],
)
def test_a_request_that_is_none_of_them_is_refused_with_400(tmp_path, body, why):
    with pytest.raises(SwapRejected) as refused:
        model_request(pipeline(tmp_path), body)
    assert refused.value.status == 400 and why in str(refused.value)


NO_MODEL = {"--state-dict": None, "--exported": None, "--torchscript": None, "--demo": None}


def flags(version=None, name=None, promote=None, rollback=None, reason=None, **models):
    return chosen_body({**NO_MODEL, **models}, version, name, promote, rollback, reason)


def test_the_flags_make_the_request_the_worker_takes():
    assert flags(promote="canary") == {"promote": "canary"}
    assert flags(promote="shadow:cand", reason="better") == {"promote": "shadow:cand", "reason": "better"}
    assert flags(rollback="canary") == {"rollback": "canary"}
    assert flags(version="7", name="seven", **{"--demo": "fraud-mlp"}) == {
        "demo": "fraud-mlp",
        "version": "7",
        "name": "seven",
    }


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ({"promote": "canary", "rollback": "canary"}, "give --promote or --rollback, not both"),
        ({"promote": "canary", "--demo": "fraud-mlp"}, "--promote takes no --demo"),
        ({"rollback": "canary", "version": "3"}, "--rollback takes no --version"),
        ({"promote": "champion"}, "--promote 'champion': promote 'canary' or 'shadow:NAME'"),
        ({"rollback": "shadow:s"}, "only the canary is rolled back"),
        ({"reason": "why not", "version": "2", "--demo": "fraud-mlp"}, "--reason goes with --promote or --rollback"),
        ({"version": "2"}, "give one model (--state-dict, --exported, --torchscript, --demo) with --version"),
        ({"version": "2", "--demo": "a", "--exported": "b"}, "found --exported and --demo"),
        ({"--demo": "fraud-mlp"}, "--demo needs --version"),
    ],
)
def test_flags_that_make_no_request_are_one_line(given, why):
    with pytest.raises(CommandLineError) as refused:
        flags(**given)
    assert why in str(refused.value) and "\n" not in str(refused.value)


def test_what_the_command_says_a_worker_did():
    answer = {"model": "fraud-mlp", "version": "c2", "decisions_topic": "app.model-decisions"}
    assert done_line("p", {"promote": "canary"}, answer) == (
        "pipeline p promoted its canary: now serves fraud-mlp vc2; every worker of the group follows the "
        "decision kept in app.model-decisions"
    )
    assert done_line("p", {"demo": "fraud-mlp", "version": "c2"}, answer) == "pipeline p now serves fraud-mlp vc2"


@pytest.mark.parametrize(
    "body",
    [
        {"demo": "fraud-mlp", "version": "v" * 1024, "name": "n" * 1024},
        {"rollback": "canary", "reason": "r" * 1000},
    ],
)
def test_every_request_taken_makes_a_decision_every_worker_reads_back(tmp_path, body):
    p = pipeline(tmp_path)
    made = model_request(p, body)
    if isinstance(made, Swap):
        decision = decided(p, "swap", "champion", made.spec, "w1 on host", request=made.body)
    else:
        decision = decided(p, "rollback", "canary", p.model, "w1 on host", reason=made.reason)
    assert parse_decision(p.name.encode(), decision.to_json()) == decision
