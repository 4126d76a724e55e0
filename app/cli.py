"""The ``sluice`` console command: the Faust app's own CLI, plus a ``--config PATH`` option.

``--config`` is taken out of the arguments (wherever it appears) before the app is
imported, because the app is built from the config file at import time.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from app.config import ENV_PATH


def take_config_option(argv: list[str]) -> tuple[list[str], str | None]:
    """Remove ``--config PATH`` / ``--config=PATH`` from ``argv``; return the rest and the path."""
    rest: list[str] = []
    path: str | None = None
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            path = next(args, None)
            if path is None:
                raise SystemExit("sluice: --config needs a file path")
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


def main() -> None:
    rest, path = take_config_option(sys.argv[1:])
    if path:
        os.environ[ENV_PATH] = path
    sys.argv = [sys.argv[0], *with_fast_loop(rest)]
    from app.main import app

    app.main()


if __name__ == "__main__":
    main()
