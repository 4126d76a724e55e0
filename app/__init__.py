"""The Faust app, its CLI commands, and the loading of sluice's config files."""
