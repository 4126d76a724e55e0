"""The ``sluice`` console command: Faust's command line, presented as sluice's.

- ``--config PATH`` is taken out of the arguments (wherever it appears) and handed on as
  ``$SLUICE_CONFIG``, which ``app.main`` reads when the command runs.
- Faust is imported only once ``sys.argv`` is final: ``import faust`` reads ``--loop`` and
  ``--datadir`` from it (so ``sluice`` can default the loop to uvloop).
- Importing reads no config: only running a command does. ``sluice --help``, ``sluice
  COMMAND --help`` and ``sluice --version`` need none. Each of sluice's other commands
  registers itself on the app when its module is imported, and only the module of the command
  named is (so ``sluice watch`` imports no torch; ``sluice backfill`` and the worker do).
- ``sluice --help`` says what sluice is and lists its commands first; Faust's commands that
  mean nothing for sluice (``agents``, ``models``, ``send``...) are hidden, and running one
  ends with one line and exit status 2.
- A command line click refuses (an unknown command or option, a value out of its range such
  as ``--web-port 70000``) ends with one line, ``sluice COMMAND: what is wrong (see sluice
  COMMAND --help)``, and exit status 2, as every other operator mistake does.
- Faust's worker conventions stay (``sluice worker -l info``, signals, ``--web-port``,
  ``--datadir``, ``--loop``), and ``faust -A app.main worker`` runs the same worker:
  ``sluice`` runs Faust's commands with ``-A app.main`` as the default app.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Any, NoReturn

import click

# When this process began running sluice (app.cli is the first of its modules any entry point
# imports): the worker says how long it took to be ready, imports and start-up checks included.
PROCESS_STARTED = time.monotonic()

APP = "app.main"

HELP = """\
Serve a PyTorch model on Kafka streams in real time, and backfill history through the same
code: a backfill scores past events exactly as the live worker would have scored them.

Start with two commands, in two terminals:

\b
    sluice worker -l info    score every configured pipeline as events arrive
    sluice produce -n 1000   write demo events to the input topic

then follow the predictions with `sluice watch`. Every command reads the config file given
with --config PATH, else $SLUICE_CONFIG, else config/sluice.toml.
"""

# sluice's commands, in the order a newcomer meets them, with their one-line summaries.
COMMANDS = {
    "worker": "Score every configured pipeline as events arrive.",
    "produce": "Write synthetic card transactions (the demo models' input).",
    "watch": "Print predictions (or dead letters) as they arrive.",
    "backfill": "Score a pipeline's history through the same code, then exit.",
    "swap-model": "Swap the model running workers serve, without downtime.",
}

# The module of each of sluice's own commands (the worker is Faust's): importing it registers it.
COMMAND_MODULES = {
    "produce": "app.commands.produce",
    "watch": "app.commands.watch",
    "backfill": "app.commands.backfill",
    "swap-model": "app.commands.swap_model",
}

WORKER_HELP = """\
Score every configured pipeline as events arrive.

Before it starts, the worker loads every pipeline's model and checks the broker and the
topics; a mistake is one line naming what to fix. It is Faust's worker: it stops cleanly on
SIGTERM or Ctrl-C, and serves /metrics and the model-swap endpoint on --web-port.
"""

_ELSEWHERE = f"not a sluice command; sluice's commands: {', '.join(COMMANDS)} (see sluice --help)"
_MODELS = (
    "not a sluice command: a pipeline's model is configured in the [pipelines.NAME.model] table "
    "of the config file, and `sluice swap-model` replaces it on running workers"
)
# Faust's commands about Faust agents, tables and records: sluice has none of them.
NOT_SLUICE = {
    "agents": _ELSEWHERE,
    "clean-versions": _ELSEWHERE,
    "livecheck": _ELSEWHERE,
    "model": _MODELS,
    "models": _MODELS,
    "reset": _ELSEWHERE,
    "send": _ELSEWHERE,
    "tables": _ELSEWHERE,
}

# Faust's top-level options, in the order sluice's help shows them; any other is hidden.
_SHOWN_OPTIONS = (
    "loglevel",
    "logfile",
    "loop",
    "datadir",
    "workdir",
    "quiet",
    "debug",
    "blocking_timeout",
    "console_port",
)


def take_config_option(argv: list[str]) -> tuple[list[str], str | None]:
    """Remove ``--config PATH`` / ``--config=PATH`` from ``argv``; return the rest and the path."""
    rest: list[str] = []
    path: str | None = None
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            path = next(args, None)
            if path is None:
                print("sluice: --config needs a file path", file=sys.stderr)
                raise SystemExit(2)
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, path


# Faust's top-level options that take a value (so their value is not the command's name).
_VALUED_OPTIONS = {
    "-A",
    "--app",
    "-l",
    "--loglevel",
    "-f",
    "--logfile",
    "-L",
    "--loop",
    "-D",
    "--datadir",
    "-W",
    "--workdir",
    "--blocking-timeout",
    "--console-port",
    "--key-serializer",
    "--value-serializer",
}


def invoked_command(argv: list[str]) -> str | None:
    """The Faust command named on a command line (``worker``, ``produce``...), if any."""
    args = iter(argv)
    for arg in args:
        if arg in _VALUED_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def with_fast_loop(argv: list[str]) -> list[str]:
    """Default Faust's ``--loop`` to uvloop when it is installed; an explicit choice wins."""
    if any(a in ("-L", "--loop") or a.startswith("--loop=") for a in argv):
        return argv
    if importlib.util.find_spec("uvloop") is None:
        return argv
    return ["--loop", "uvloop", *argv]


def version_line() -> str:
    """sluice's version, and those of the libraries it serves models with."""

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "(not installed)"

    libraries = ", ".join(f"{dist} {of(dist)}" for dist in ("faust-streaming", "aiokafka", "torch"))
    return f"sluice {of('sluice')} ({libraries})"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_line())
        ctx.exit()


def _refusal(name: str) -> click.Command:
    """A hidden command that ends with one line saying ``name`` is not a sluice command."""

    def refuse() -> NoReturn:
        print(f"sluice {name}: {NOT_SLUICE[name]}", file=sys.stderr)
        raise SystemExit(2)

    return click.Command(
        name,
        callback=refuse,
        hidden=True,
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


class OneLineUsageError(click.ClickException):
    """A ``click.UsageError`` said in one line, with the command it is about."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        where = error.ctx.command_path if error.ctx is not None else "sluice"
        super().__init__(f"{where}: {' '.join(error.format_message().split())} (see {where} --help)")

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.format_message(), file=file, err=True)


def _one_line(error: click.UsageError) -> click.ClickException:
    # "sluice" alone answers with its help (click raises that as a usage error too).
    return error if isinstance(error, click.exceptions.NoArgsIsHelpError) else OneLineUsageError(error)


class _FaustRootContext(click.Context):
    """The root context Faust's commands read (as ``faust.cli.base._Group.make_context`` sets it)."""

    app: Any = None  # None: a command imports the app named by ``--app`` (app.main) itself
    stdout: IO[str] | None = None
    stderr: IO[str] | None = None
    side_effects = True


class SluiceGroup(click.Group):
    """Faust's command group (its options, its callback, its registry of commands) as sluice's."""

    context_class = _FaustRootContext

    def __init__(self, faust_cli: click.Group) -> None:
        shown = {p.name: p for p in faust_cli.params if p.name in _SHOWN_OPTIONS}
        if "loop" in shown and importlib.util.find_spec("uvloop") is not None:
            shown["loop"] = copy.copy(shown["loop"])  # Faust's own command line keeps its default
            shown["loop"].default = "uvloop"  # as with_fast_loop chooses
        hidden = [
            _hide(p) for p in faust_cli.params if p.name not in _SHOWN_OPTIONS and p.name not in ("app", "version")
        ]
        app_option = click.Option(["--app", "-A"], default=APP, hidden=True, help="The Faust app to run.")
        version_option = click.Option(
            ["--version"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_print_version,
            help="Show sluice's version (and Faust's, aiokafka's, torch's) and exit.",
        )
        super().__init__(
            name="sluice",
            # The same registry: Faust's built-in commands, and sluice's once app.main is imported.
            commands=faust_cli.commands,
            params=[*(shown[n] for n in _SHOWN_OPTIONS if n in shown), *hidden, app_option, version_option],
            callback=faust_cli.callback,
            help=HELP,
        )

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # the command's own arguments, or a command that does not exist
            raise _one_line(exc) from None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in NOT_SLUICE:
            return _refusal(cmd_name)
        if cmd_name in COMMAND_MODULES and cmd_name not in self.commands:
            importlib.import_module(COMMAND_MODULES[cmd_name])  # registers it; reads no config
        command = self.commands.get(cmd_name)
        if cmd_name == "worker" and command is not None:
            command = copy.copy(command)  # Faust's worker, with sluice's words
            command.help = WORKER_HELP
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *self._faust_commands()]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Written from COMMANDS, so that the help imports no command (nor the torch some need).
        with formatter.section("Commands"):
            formatter.write_dl(list(COMMANDS.items()))
        others = self._faust_commands()
        if others:
            limit = formatter.width - 6 - max(len(name) for name in others)
            with formatter.section("Other commands (Faust's)"):
                formatter.write_dl([(n, self.commands[n].get_short_help_str(limit)) for n in others])

    def _faust_commands(self) -> list[str]:
        """Faust's commands that sluice keeps, besides its worker."""
        return sorted(
            name
            for name, command in self.commands.items()
            if name not in COMMANDS and name not in NOT_SLUICE and not command.hidden
        )


def _hide(param: click.Parameter) -> click.Parameter:
    hidden = copy.copy(param)  # Faust's own command line keeps showing it
    if isinstance(hidden, click.Option):
        hidden.hidden = True
    return hidden


def sluice_cli() -> SluiceGroup:
    """sluice's command line; imports Faust, so only once ``sys.argv`` is final."""
    from faust.cli.faust import cli  # Faust's umbrella command, its built-in commands registered

    return SluiceGroup(cli)


def main() -> None:
    from app.kafka_clients import hush_unread_connection_errors

    hush_unread_connection_errors()
    rest, path = take_config_option(sys.argv[1:])
    sys.argv = [sys.argv[0], *with_fast_loop(rest)]
    if path:
        from app.config import ENV_PATH

        # Absolute: ``--workdir`` changes directory before the command reads the config.
        os.environ[ENV_PATH] = os.path.abspath(path)
    sluice_cli().main(args=sys.argv[1:], prog_name="sluice")


if __name__ == "__main__":
    main()
