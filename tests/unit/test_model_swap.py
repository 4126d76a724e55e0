from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from app.commands.swap_model import request_body
from app.config import load_config
from app.model_swap import SwapRejected, swap_spec
from app.web import authorized
from models.loading import ModelSpec


def pipeline(tmp_path: Path, model: str = 'demo = "fraud-mlp"', extra: str = ""):
    path = tmp_path / "sluice.toml"
    path.write_text(
        f"""
[pipelines.p]
input_topics = ["in"]
output_topic = "out"
dead_letter_topic = "dlq"
{extra}
[pipelines.p.model]
{model}
[pipelines.p.features]
inputs = [{{ field = "features", shape = [32] }}]
"""
    )
    return load_config(path).pipeline("p")


def test_new_weights_for_a_demo_model_load_into_its_class_from_an_allowed_folder(tmp_path):
    (tmp_path / "models").mkdir()
    p = pipeline(tmp_path, extra='model_dirs = ["models"]')
    spec = swap_spec(p, {"state_dict": "v2.pt", "version": "2"})
    assert spec == ModelSpec(
        module_class="models.demo:FraudMLP", state_dict=tmp_path / "models" / "v2.pt", name="fraud-mlp", version="2"
    )


def test_a_configured_class_keeps_its_constructor_arguments(tmp_path):
    model = 'class = "pkg.nets:Net"\nstate_dict = "w/v1.pt"\ninit_args = { hidden = 8 }'
    p = pipeline(tmp_path, model=model)
    assert p.model_dirs == (tmp_path / "w",), "by default, the folder of the configured weights"
    spec = swap_spec(p, {"state_dict": str(tmp_path / "w" / "v2.pt"), "version": "2", "name": "net"})
    assert (spec.module_class, spec.init_args, spec.version, spec.name) == ("pkg.nets:Net", {"hidden": 8}, "2", "net")


@pytest.mark.parametrize(
    ("request_", "status", "says"),
    [
        ({"state_dict": "/etc/passwd", "version": "2"}, 403, "outside the folders"),
        ({"state_dict": "../../escape.pt", "version": "2"}, 403, "outside the folders"),
        ({"state_dict": "v2.pt"}, 400, "'version' is required"),
        ({"state_dict": "v2.pt", "demo": "fraud-mlp", "version": "2"}, 400, "exactly one"),
        ({"class": "os:system", "version": "2"}, 400, "unknown field"),
        ({"demo": "gpt", "version": "2"}, 400, "unknown demo model"),
        (["not", "an", "object"], 400, "JSON object"),
    ],
)
def test_what_a_swap_may_not_ask_for(tmp_path, request_, status, says):
    with pytest.raises(SwapRejected, match=says) as caught:
        swap_spec(pipeline(tmp_path), request_)
    assert caught.value.status == status


def test_a_symlink_out_of_the_allowed_folder_is_refused(tmp_path):
    allowed = tmp_path / "models"
    allowed.mkdir()
    (allowed / "sneaky.pt").symlink_to(tmp_path / "elsewhere.pt")
    p = replace(pipeline(tmp_path), model_dirs=(allowed,))
    with pytest.raises(SwapRejected, match="outside the folders"):
        swap_spec(p, {"state_dict": "sneaky.pt", "version": "2"})


def test_an_exported_model_has_no_class_for_new_weights(tmp_path):
    p = pipeline(tmp_path, model='exported = "m/model.pt2"')
    assert swap_spec(p, {"exported": "model-v2.pt2", "version": "2"}).exported == tmp_path / "m" / "model-v2.pt2"
    with pytest.raises(SwapRejected, match="no class to load a state dict into"):
        swap_spec(p, {"state_dict": "w.pt", "version": "2"})


def test_only_the_right_bearer_token_is_authorized():
    assert authorized({"Authorization": "Bearer s3cret"}, "s3cret")
    assert not authorized({"Authorization": "Bearer wrong"}, "s3cret")
    assert not authorized({"Authorization": "s3cret"}, "s3cret")
    assert not authorized({}, "s3cret")
    assert not authorized({"Authorization": "Bearer "}, None), "no token configured: nobody is"


def test_the_cli_sends_absolute_paths_for_files_that_exist_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v2.pt").write_bytes(b"")
    assert request_body("2", None, state_dict="v2.pt", demo=None) == {
        "version": "2",
        "state_dict": str(tmp_path / "v2.pt"),
    }
    assert request_body("3", "m", state_dict="remote.pt", demo=None) == {
        "version": "3",
        "state_dict": "remote.pt",
        "name": "m",
    }
