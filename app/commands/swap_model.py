"""``sluice swap-model``: change the model a pipeline serves on running workers, without downtime:
swap in another model, promote the canary or a shadow to champion, or roll the canary back.

The worker asked loads and warms up the new model beside the old one, writes the decision to the
decisions topic (``[app] decisions_topic``) and swaps it in between two batches; every other
worker of the group follows the decision from the topic, and a worker started later applies it
too. A worker that cannot load the model keeps the old one, says why, and decides nothing.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any
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


def chosen_body(
    models: dict[str, str | None],
    version: str | None,
    name: str | None,
    promote: str | None,
    rollback: str | None,
    reason: str | None,
) -> dict[str, str]:
    """The request the flags make, or ``CommandLineError`` when they do not make one."""
    given = [flag for flag, value in models.items() if value is not None]
    role_flags = [f for f, v in (("--promote", promote), ("--rollback", rollback)) if v is not None]
    if len(role_flags) == 2:
        raise CommandLineError("give --promote or --rollback, not both")
    if role_flags:
        extra = given + [f for f, v in (("--version", version), ("--name", name)) if v is not None]
        if extra:
            raise CommandLineError(
                f"{role_flags[0]} takes no {' '.join(extra)}: the model is the one the config names for that role"
            )
        if promote is not None and promote != "canary" and not promote.startswith("shadow:"):
            raise CommandLineError(f"--promote {promote!r}: promote 'canary' or 'shadow:NAME'")
        if rollback is not None and rollback != "canary":
            raise CommandLineError(f"--rollback {rollback!r}: only the canary is rolled back ('--rollback canary')")
        body = {"promote": promote} if promote is not None else {"rollback": rollback or "canary"}
        return {**body, **({"reason": reason} if reason is not None else {})}
    if reason is not None:
        raise CommandLineError("--reason goes with --promote or --rollback")
    if len(given) != 1:
        raise CommandLineError(
            f"give one model ({', '.join(models)}) with --version, or --promote / --rollback"
            + (f"; found {' and '.join(given)}" if given else "")
        )
    if version is None:
        raise CommandLineError(f"{given[0]} needs --version: every output names the version that scored it")
    flag_names = {
        "--state-dict": "state_dict",
        "--exported": "exported",
        "--torchscript": "torchscript",
        "--demo": "demo",
    }
    return request_body(version, name, **{flag_names[flag]: value for flag, value in models.items()})


def done_line(pipeline: str, body: dict[str, str], answer: dict[str, Any]) -> str:
    """What the CLI says a worker answered to ``body``."""
    serving = f"{answer['model']} v{answer['version']}"
    kept = f"every worker of the group follows the decision kept in {answer.get('decisions_topic', '?')}"
    if "promote" in body:
        return f"pipeline {pipeline} promoted its {body['promote']}: now serves {serving}; {kept}"
    if "rollback" in body:
        return f"pipeline {pipeline} rolled its canary back: {serving} scores every key; {kept}"
    return f"pipeline {pipeline} now serves {serving}"


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
    option("--pipeline", "-p", default=None, help="Pipeline whose models to change (default: the first)."),
    option("--version", "version_", default=None, help="Version of the model swapped in; every output carries it."),
    option("--state-dict", default=None, help="New weights for the configured class (a torch.save state dict)."),
    option("--exported", default=None, help="A torch.export archive (.pt2)."),
    option("--torchscript", default=None, help="A TorchScript file."),
    option("--demo", default=None, help="A demo model by name."),
    option("--name", default=None, help="Model name in the outputs (default: kept or taken from the file)."),
    option("--promote", default=None, help="Promote 'canary' or 'shadow:NAME' to champion (no model flags)."),
    option("--rollback", default=None, help="Roll 'canary' back: the champion scores all its keys again."),
    option("--reason", default=None, help="Why, kept with a --promote or --rollback decision."),
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
    version_: str | None,
    state_dict: str | None,
    exported: str | None,
    torchscript: str | None,
    demo: str | None,
    name: str | None,
    promote: str | None,
    rollback: str | None,
    reason: str | None,
    workers: tuple[str, ...],
) -> None:
    """Swap, promote or roll back the model a pipeline serves on every worker (needs the admin token)."""
    target = pipeline or config.pipelines[0].name
    token = os.environ.get(config.app.admin_token_env)
    urls = workers or (f"http://{config.app.web_bind}:{config.app.web_port}",)
    with exit_on_operator_error("swap-model"):
        models = {"--state-dict": state_dict, "--exported": exported, "--torchscript": torchscript, "--demo": demo}
        body = chosen_body(models, version_, name, promote, rollback, reason)
        if not token:
            raise CommandLineError(f"set ${config.app.admin_token_env} to the workers' admin token")
        for url in urls:
            if problem := token_exposed(url):
                raise CommandLineError(problem)
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
                print(f"{url}: {done_line(target, body, answer)}", file=sys.stderr)
            else:
                failed += 1
                what = "not swapped" if "promote" not in body and "rollback" not in body else "not changed"
                print(f"{url}: {what}: {answer.get('error', answer)}", file=sys.stderr)
    if failed:
        raise SystemExit(1)
