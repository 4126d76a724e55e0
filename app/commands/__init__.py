"""CLI commands registered on the Faust app, one per module; their logic lives in ``streams`` and ``app``.

Importing a command's module registers it and reads no config (``app.main.config`` is read
when the command runs); ``app.cli.COMMAND_MODULES`` names the module of each.
"""
