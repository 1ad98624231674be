"""The recipe: frozen dataclasses loaded from YAML, the data sources, and the protocol presets."""
