"""What a pipeline serves once decisions are applied to its config (app.decision_rules): each
decision held to the config as written, the config winning where they disagree, and a swap
request from the topic held to what the swap endpoint allows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from app.config import load_config
from app.decision_rules import NotApplicable, Serving, applied, fold, ignored_line, model_label, same_model
from app.model_decisions import Decision
from models.spec import ModelSpec

CANARY = 'canary = { demo = "fraud-mlp", version = "c2", fraction = 0.3 }'
SHADOW = 'shadows.cand = { demo = "fraud-mlp", version = "s1" }'


def pipeline(tmp_path: Path, *, roles: str = f"{CANARY}\n{SHADOW}", model: str = 'demo = "fraud-mlp"'):
    (tmp_path / "models").mkdir(exist_ok=True)
    path = tmp_path / "sluice.toml"
    path.write_text(
        f"""
[pipelines.p]
input_topics = ["in"]
output_topic = "out"
dead_letter_topic = "dlq"
model_dirs = ["models"]
{roles}
[pipelines.p.model]
{model}
[pipelines.p.features]
inputs = [{{ field = "features", shape = [32] }}]
"""
    )
    return load_config(path).pipeline("p")


def decision(action="promote", role="canary", version="c2", model="fraud-mlp", **rest) -> Decision:
    return Decision("p", action, role, model, version, 1_700_000_000_000 + len(rest), "w1", **rest)


def test_promoting_the_canary_makes_its_model_the_champion_and_leaves_no_canary(tmp_path):
    p = pipeline(tmp_path)
    serving = applied(p, Serving.of(p), decision())
    assert serving.champion == p.roles.canary.model
    assert serving.canary is None and serving.shadows == p.roles.shadows
    built = serving.config(p)
    assert built.model == p.roles.canary.model and built.roles.canary is None
    assert built.roles.fallback == p.roles.fallback and built.input_topics == p.input_topics


def test_promoting_a_shadow_makes_its_model_the_champion_and_lets_the_shadow_go(tmp_path):
    p = pipeline(tmp_path)
    serving = applied(p, Serving.of(p), decision(role="shadow", shadow="cand", version="s1", model="cand"))
    assert serving.champion == p.roles.shadows[0].model
    assert serving.shadows == () and serving.canary == p.roles.canary


def test_rolling_the_canary_back_leaves_the_champion(tmp_path):
    p = pipeline(tmp_path)
    serving = applied(p, Serving.of(p), decision("rollback", reason="slow"))
    assert serving == replace(Serving.of(p), canary=None)


@pytest.mark.parametrize(
    ("made", "roles", "why"),
    [
        (decision(version="c1"), None, "the config's canary is fraud-mlp vc2 now, not fraud-mlp vc1"),
        (decision(model="other"), None, "the config's canary is fraud-mlp vc2 now, not other vc2"),
        (decision(), SHADOW, "the config has no canary now ([pipelines.p.canary])"),
        (decision("rollback"), SHADOW, "the config has no canary now"),
        (decision(role="shadow", shadow="gone", version="s1"), None, "the config has no shadow 'gone' now"),
        (
            decision(role="shadow", shadow="cand", version="s0", model="cand"),
            None,
            "the config's shadow 'cand' is cand vs1 now",
        ),
    ],
)
def test_a_decision_the_config_no_longer_matches_is_not_applied(tmp_path, made, roles, why):
    p = pipeline(tmp_path, **({"roles": roles} if roles is not None else {}))
    with pytest.raises(NotApplicable, match=why.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        applied(p, Serving.of(p), made)


def test_a_promotion_the_operator_wrote_into_the_config_is_done(tmp_path):
    p = pipeline(tmp_path, model='demo = "fraud-mlp"\nversion = "c2"')
    with pytest.raises(NotApplicable, match="the config's champion already is fraud-mlp vc2"):
        applied(p, Serving.of(p), decision())


def test_a_swap_decision_passes_the_swap_endpoints_checks(tmp_path):
    p = pipeline(tmp_path)
    serving = applied(
        p, Serving.of(p), decision("swap", "champion", "7", request={"state_dict": "v7.pt", "version": "7"})
    )
    assert serving.champion.state_dict == (tmp_path / "models" / "v7.pt").resolve()
    assert serving.champion.module_class == "models.demo:FraudMLP" and serving.champion.version == "7"
    assert serving.canary == p.roles.canary, "a swap replaces the champion only"


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        ({"state_dict": "/etc/passwd", "version": "7"}, "outside the folders models may be loaded from"),
        ({"state_dict": "../../escape.pt", "version": "7"}, "outside the folders models may be loaded from"),
        ({"torchscript": "models/code.pt", "version": "7"}, "does not trust TorchScript"),
        ({"demo": "no-such-demo", "version": "7"}, "unknown demo model"),
        ({"demo": "fraud-mlp"}, "'version' is required"),
        ({"demo": "fraud-mlp", "version": "7", "trust_torchscript": "true"}, "unknown field"),
    ],
)
def test_a_swap_decision_the_endpoint_would_refuse_is_not_applied(tmp_path, request_, why):
    p = pipeline(tmp_path)
    (tmp_path / "models" / "code.pt").write_bytes(b"TorchScript is code")
    with pytest.raises(NotApplicable, match=f"this worker refuses its swap request: .*{why}"):
        applied(p, Serving.of(p), decision("swap", "champion", "7", request=request_))


def test_a_swap_to_the_configs_own_champion_undoes_a_promotion(tmp_path):
    p = pipeline(tmp_path)
    promoted = decision()
    back = Decision(
        "p",
        "swap",
        "champion",
        "fraud-mlp",
        "2",
        1_800_000_000_000,
        "w2",
        request={"demo": "fraud-mlp", "version": "2"},
    )
    serving = fold(p, back.after(promoted), lambda d, why: pytest.fail(why))
    assert same_model(serving.champion, p.model), "the config's champion serves again"
    assert serving.canary is None, "and the promoted canary does not come back"


def test_folding_applies_the_chain_in_order_and_tells_what_it_skips(tmp_path):
    p = pipeline(tmp_path)
    rollback = decision("rollback", reason="slow")
    stale = decision(role="shadow", shadow="cand", version="s0", model="cand")
    swap = Decision(
        "p",
        "swap",
        "champion",
        "fraud-mlp",
        "7",
        1_800_000_000_000,
        "w2",
        request={"demo": "fraud-mlp", "version": "7"},
    )
    latest = swap.after(stale.after(rollback))
    ignored: list[tuple[str, str]] = []
    serving = fold(p, latest, lambda d, why: ignored.append((d.what, why)))
    assert serving.canary is None, "a swap after a roll-back does not bring the canary back"
    assert serving.champion.demo == "fraud-mlp" and serving.champion.version == "7"
    assert serving.shadows == p.roles.shadows, "the stale promotion changed nothing"
    assert ignored == [("promote shadow:cand", "the config's shadow 'cand' is cand vs1 now, not cand vs0")]
    assert fold(p, None, lambda d, why: pytest.fail(why)) == Serving.of(p)


def test_the_ignored_line_says_what_why_and_what_to_do(tmp_path):
    p = pipeline(tmp_path)
    line = ignored_line(p, decision(version="c1"), "the config's canary is fraud-mlp vc2 now")
    assert line.startswith("pipeline p: decision to promote canary (fraud-mlp vc1, by w1 at 2023-11-14 22:13:20 UTC)")
    assert "ignored: the config's canary is fraud-mlp vc2 now; the config wins" in line
    assert "sluice swap-model" in line


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        (ModelSpec(demo="fraud-mlp"), ("fraud-mlp", "2")),
        (ModelSpec(demo="fraud-mlp", name="mlp", version="9"), ("mlp", "9")),
        (ModelSpec(exported=Path("/m/net-v3.pt2")), ("net-v3", "1")),
        (ModelSpec(torchscript=Path("/m/ts.pt"), version="4"), ("ts", "4")),
        (ModelSpec(module_class="pkg.nets:Outer.Net", state_dict=Path("w.pt")), ("Net", "1")),
    ],
)
def test_a_models_label_is_known_without_loading_it(spec, label):
    assert model_label(spec) == label
