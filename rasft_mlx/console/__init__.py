"""The console: the training display, tables, and phase progress with prompt interruption."""
