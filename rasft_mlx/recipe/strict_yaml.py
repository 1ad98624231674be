"""YAML for recipes: PyYAML's safe loader, but a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word, so a stray line such as a second
`protocol:` or `seed:` would silently decide what a run does."""

from __future__ import annotations

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names one key twice (a yaml.YAMLError with the second key's mark)."""


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_lines: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first_lines.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if earlier is not None:
                    raise DuplicateKeyError(
                        None,
                        None,
                        f"key {key!r} appears twice in one mapping (first on line {earlier}); "
                        "YAML would keep only the last",
                        key_node.start_mark,
                    )
                first_lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str):
    """Parse YAML text safely, refusing duplicate keys (raises a yaml.YAMLError subclass)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
