"""CLI commands registered on the Faust app, one per module; their logic lives in ``streams`` and ``app``."""
