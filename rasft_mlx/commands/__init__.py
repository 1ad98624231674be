"""Commands: the entry points the CLI and scripts call (train)."""
