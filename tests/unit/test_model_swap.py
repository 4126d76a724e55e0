from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from aiohttp import web

from app.commands.swap_model import request_body, token_exposed
from app.config import load_config
from app.model_swap import swap_spec
from app.web import ThrottledWarning, authorized
from models.loading import ModelSpec, load_model
from models.registry import DEMO_MODELS
from streams.errors import ModelLoadError, SwapRejected


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
        module_class="models.demo:FraudMLP",
        state_dict=(tmp_path / "models" / "v2.pt").resolve(),
        name="fraud-mlp",
        version="2",
        confine_to=(tmp_path / "models",),
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


def fraud_weights(path: Path, shift: float) -> Path:
    """A state dict for the demo MLP whose output bias is shifted by ``shift``: tells files apart."""
    weights = torch.load(DEMO_MODELS["fraud-mlp"].weights, weights_only=True)
    weights["layers.4.bias"] = weights["layers.4.bias"] + shift
    torch.save(weights, path)
    return path


def output_bias(spec: ModelSpec) -> float:
    return float(load_model(spec).module.state_dict()["layers.4.bias"][0])


def test_the_swap_loads_the_file_it_checked_not_where_a_link_points_later(tmp_path):
    allowed = tmp_path / "models"
    allowed.mkdir()
    checked = fraud_weights(allowed / "v2.pt", shift=1.0)
    outside = fraud_weights(tmp_path / "outside.pt", shift=50.0)
    (allowed / "current.pt").symlink_to(checked)
    p = replace(pipeline(tmp_path), model_dirs=(allowed,))
    spec = swap_spec(p, {"state_dict": "current.pt", "version": "2"})
    assert spec.state_dict == checked.resolve(), "the link was resolved once, when it was checked"
    # Re-point the link between the check and the load, as a race would.
    (allowed / "current.pt").unlink()
    (allowed / "current.pt").symlink_to(outside)
    base = float(torch.load(DEMO_MODELS["fraud-mlp"].weights, weights_only=True)["layers.4.bias"][0])
    assert output_bias(spec) == pytest.approx(base + 1.0), "v2, the checked file, not the one outside"


def test_a_checked_file_swapped_for_a_link_before_the_load_is_refused(tmp_path):
    allowed = tmp_path / "models"
    allowed.mkdir()
    checked = fraud_weights(allowed / "v2.pt", shift=1.0)
    outside = fraud_weights(tmp_path / "outside.pt", shift=50.0)
    p = replace(pipeline(tmp_path), model_dirs=(allowed,))
    spec = swap_spec(p, {"state_dict": "v2.pt", "version": "2"})
    checked.unlink()
    checked.symlink_to(outside)
    with pytest.raises(ModelLoadError, match=f"cannot open weights file for models.demo:FraudMLP {checked}: "):
        load_model(spec)


@pytest.mark.timeout(60)  # a regression would block opening the FIFO; fail instead of hanging the suite
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_swap_to_something_that_is_not_a_regular_file_is_refused_before_it_is_opened(tmp_path, kind):
    allowed = tmp_path / "models"
    allowed.mkdir()
    target = allowed / "v2.pt"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    p = replace(pipeline(tmp_path), model_dirs=(allowed,))
    expected = "a FIFO" if kind == "fifo" else "a directory"
    with pytest.raises(SwapRejected, match=f"{target} is {expected}, not a regular file") as caught:
        swap_spec(p, {"state_dict": "v2.pt", "version": "2"})
    assert caught.value.status == 400


def test_a_swap_to_torchscript_needs_the_config_to_trust_it(tmp_path):
    (tmp_path / "m").mkdir()
    untrusted = pipeline(tmp_path, model='exported = "m/model.pt2"')
    with pytest.raises(SwapRejected, match=r"set trust_torchscript = true in \[pipelines.p.model\]") as caught:
        swap_spec(untrusted, {"torchscript": "v2.ts", "version": "2"})
    assert caught.value.status == 403
    trusted = pipeline(tmp_path, model='torchscript = "m/v1.ts"\ntrust_torchscript = true')
    spec = swap_spec(trusted, {"torchscript": "v2.ts", "version": "2"})
    assert (spec.torchscript, spec.trust_torchscript) == ((tmp_path / "m" / "v2.ts").resolve(), True)
    with pytest.raises(SwapRejected, match="unknown field"):
        swap_spec(untrusted, {"torchscript": "v2.ts", "version": "2", "trust_torchscript": True})


def test_a_malformed_authorization_header_is_refused_not_an_error():
    # aiohttp passes bytes that are not UTF-8 on as lone surrogates (surrogateescape).
    assert not authorized({"Authorization": "Bearer s3cr\udcffet"}, "s3cret")
    assert not authorized({"Authorization": "Bearer \ud800"}, "s3cret"), "not even surrogateescape can encode it"
    assert not authorized({"Authorization": "Bearer s3cret\udcff"}, "s3cret")
    assert not authorized({"Authorization": "\udcff s3cret"}, "s3cret")
    assert authorized({"Authorization": "Bearer caf\udce9"}, "caf\udce9"), "a token's own raw bytes still match"


async def test_a_raw_non_ascii_byte_in_the_header_reaches_the_check_and_gets_401(unused_tcp_port):
    """Through aiohttp's real header parser, which is what hands the worker its headers."""

    async def swap(request: web.Request) -> web.Response:
        return web.Response(status=200 if authorized(request.headers, "s3cret") else 401)

    application = web.Application()
    application.router.add_post("/", swap)
    runner = web.AppRunner(application)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        replies = []
        for header in (b"Bearer \xff\xfe", b"Bearer s3cret\x80", b"\xc3\x28 s3cret", b"Bearer s3cret"):
            reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: " + header + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            replies.append((await reader.readline()).split(b" ")[1])
            writer.close()
            await writer.wait_closed()
    finally:
        await runner.cleanup()
    assert replies == [b"401", b"401", b"401", b"200"]


def test_refused_tokens_log_one_warning_per_interval_with_a_count_of_the_rest(caplog):
    now = [1000.0]
    throttled = ThrottledWarning(logging.getLogger("sluice.test.web"), every_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="sluice.test.web"):
        logged = [throttled.warning("refused from %s", "10.0.0.9") for _ in range(500)]
        now[0] += 59.0
        logged.append(throttled.warning("refused from %s", "10.0.0.9"))
        now[0] += 1.0
        logged.append(throttled.warning("refused from %s", "10.0.0.9"))
    assert logged.count(True) == 2 and logged[0] and logged[-1]
    assert [r.getMessage() for r in caplog.records] == [
        "refused from 10.0.0.9",
        "refused from 10.0.0.9 (and 500 more in the last 60s, not logged)",
    ]


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:6066", False),
        ("http://localhost:6066", False),
        ("http://[::1]:6066", False),
        ("http://0.0.0.0:6066", False),  # the default URL when web_bind = "0.0.0.0": this host
        ("https://worker-1.internal:8443", False),
        ("http://10.0.0.5:6066", True),
        ("http://worker-1.internal:6066", True),
        ("ftp://10.0.0.5", True),
    ],
)
def test_the_cli_never_sends_the_admin_token_over_plain_http_off_this_host(url, refused):
    problem = token_exposed(url)
    assert (problem is not None) == refused
    if problem and url.startswith("http:"):
        assert problem.startswith(f"--worker {url}: refusing to send the admin token over plain HTTP")
