"""``sluice swap-model``: ask running workers to swap a pipeline's model, without downtime.

Each worker loads and warms up the new model beside the old one and swaps it in between
two batches; a worker that cannot load it keeps the old model and says why. Scaled out,
name every worker with ``--worker`` (each serves its own partitions).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from urllib.parse import urlsplit

import aiohttp
import orjson
from faust.cli import AppCommand, option

from app.main import app, config
from streams.errors import CommandLineError, exit_on_operator_error


def request_body(version: str, name: str | None, **choices: str | None) -> dict[str, str]:
    """The JSON a worker's ``POST /pipelines/NAME/model`` takes."""
    body = {"version": version}
    for kind, value in choices.items():
        if value is not None and kind != "demo":
            # Paths as the worker sees them: absolute when they exist here, else as given.
            body[kind] = os.path.abspath(value) if os.path.exists(value) else value
        elif value is not None:
            body[kind] = value
    if name is not None:
        body["name"] = name
    return body


def token_exposed(url: str) -> str | None:
    """Why sending the admin token to ``url`` would show it to the network, or None when it would not.

    Over plain HTTP the token crosses the network readable; only the loopback interface, or
    HTTPS (a TLS-terminating proxy in front of the worker's web port), keeps it private.
    """
    parts = urlsplit(url)
    if parts.scheme == "https":
        return None
    if parts.scheme != "http":
        return f"--worker {url!r}: expected http://127.0.0.1:PORT on the worker's host, or https://"
    host = parts.hostname or ""
    if host == "localhost":
        return None
    try:
        address = ipaddress.ip_address(host)
        # 0.0.0.0 / :: as a destination is this host too (a web_bind of 0.0.0.0 makes the default URL that).
        loopback = address.is_loopback or address.is_unspecified
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"--worker {url}: refusing to send the admin token over plain HTTP to {host}, where the network can "
        "read it; keep the worker's web port on 127.0.0.1 and reach it through a TLS proxy (https://...), "
        "or run swap-model on that host"
    )


@app.command(
    option("--pipeline", "-p", default=None, help="Pipeline whose model to swap (default: the first)."),
    option("--version", "version_", required=True, help="Version of the new model; every output carries it."),
    option("--state-dict", default=None, help="New weights for the configured class (a torch.save state dict)."),
    option("--exported", default=None, help="A torch.export archive (.pt2)."),
    option("--torchscript", default=None, help="A TorchScript file."),
    option("--demo", default=None, help="A demo model by name."),
    option("--name", default=None, help="Model name in the outputs (default: kept or taken from the file)."),
    option(
        "--worker",
        "workers",
        multiple=True,
        help="Worker web address, repeatable (default: this config's web_bind:web_port): http:// only on "
        "this host (127.0.0.1), else https:// through a TLS proxy, since the admin token travels with it.",
    ),
)
async def swap_model(
    self: AppCommand,
    pipeline: str | None,
    version_: str,
    state_dict: str | None,
    exported: str | None,
    torchscript: str | None,
    demo: str | None,
    name: str | None,
    workers: tuple[str, ...],
) -> None:
    """Swap the model a pipeline serves on running workers (needs the admin token in the environment)."""
    target = pipeline or config.pipelines[0].name
    token = os.environ.get(config.app.admin_token_env)
    urls = workers or (f"http://{config.app.web_bind}:{config.app.web_port}",)
    with exit_on_operator_error("swap-model"):
        if not token:
            raise CommandLineError(f"set ${config.app.admin_token_env} to the workers' admin token")
        for url in urls:
            if problem := token_exposed(url):
                raise CommandLineError(problem)
    body = request_body(version_, name, state_dict=state_dict, exported=exported, torchscript=torchscript, demo=demo)
    failed = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for url in urls:
            endpoint = f"{url.rstrip('/')}/pipelines/{target}/model"
            try:
                async with session.post(endpoint, json=body, headers={"Authorization": f"Bearer {token}"}) as reply:
                    text = await reply.text()
                    ok = reply.status == 200
                    try:
                        answer = orjson.loads(text)
                    except orjson.JSONDecodeError:
                        answer = {"error": f"HTTP {reply.status}: {text[:500]}"}
            except aiohttp.ClientError as exc:
                answer, ok = {"error": f"cannot reach the worker: {exc}"}, False
            if ok:
                print(f"{url}: pipeline {target} now serves {answer['model']} v{answer['version']}", file=sys.stderr)
            else:
                failed += 1
                print(f"{url}: not swapped: {answer.get('error', answer)}", file=sys.stderr)
    if failed:
        raise SystemExit(1)
