"""Typed fields of frozen dataclasses from YAML values: conversion, range checks, clear errors.

Generic over the dataclass tree (config.py holds the recipe's own classes): every error names the
source (a file or a `--set`), the dotted key, what was expected and what came, and suggests the
nearest key for a typo.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import fields, is_dataclass
from difflib import get_close_matches

import yaml

_NO_MATCH = object()
_NONE_TYPE = type(None)
_EXPECTED = {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def field_meta(lo=None, hi=None, *, lo_open=False, choices=None, help=""):
    """Field metadata: inclusive bounds (exclusive when lo_open), allowed choices, help text."""
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "help": help}


class RecipeError(ValueError):
    """An invalid recipe; the message names the source (file or --set) and the dotted key."""


@functools.cache
def field_hints(cls: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def section_choice(hint) -> type | None:
    """The dataclass of a `str | Section` field (a value or a whole section), else None."""
    if not _is_union(hint):
        return None
    sections = [arg for arg in typing.get_args(hint) if is_dataclass(arg)]
    return sections[0] if sections else None


def _is_variadic(hint) -> bool:
    args = typing.get_args(hint)
    return len(args) == 2 and args[1] is Ellipsis


def _convert(hint, value):
    """Return ``value`` converted to ``hint``'s type, or _NO_MATCH when it does not fit."""
    if _is_union(hint):
        if value is None and _NONE_TYPE in typing.get_args(hint):
            return None
        for arg in typing.get_args(hint):
            if is_dataclass(arg):
                if isinstance(value, arg):
                    return value
                continue
            converted = _convert(arg, value) if arg is not _NONE_TYPE else _NO_MATCH
            if converted is not _NO_MATCH:
                return converted
        return _NO_MATCH
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            return _NO_MATCH
        args = typing.get_args(hint)
        item_hints = [args[0]] * len(value) if _is_variadic(hint) else list(args)
        if len(item_hints) != len(value):
            return _NO_MATCH
        items = tuple(_convert(h, v) for h, v in zip(item_hints, value, strict=True))
        return _NO_MATCH if _NO_MATCH in items else items
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return _NO_MATCH
        try:  # strings too: YAML 1.1 reads "1e-4" (no dot) as a string
            number = float(value)
        except (ValueError, OverflowError):
            return _NO_MATCH
        return number if math.isfinite(number) else _NO_MATCH
    if hint is int and isinstance(value, bool):
        return _NO_MATCH
    if hint in (int, bool, str):
        return value if isinstance(value, hint) else _NO_MATCH
    raise TypeError(f"unsupported recipe field type {hint!r}")


def _expected(hint) -> str:
    if _is_union(hint):
        args = typing.get_args(hint)
        parts = [
            _section_expected(a) if is_dataclass(a) else _expected(a)
            for a in args
            if a is not _NONE_TYPE
        ]
        return " or ".join(parts + (["null"] if _NONE_TYPE in args else []))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        count = "" if _is_variadic(hint) else f"{len(args)} "
        return f"a list of {count}{_PLURAL[args[0]]}"
    return _EXPECTED[hint]


def _section_expected(cls: type) -> str:
    return "a mapping with keys " + ", ".join(f.name for f in fields(cls))


def type_label(hint) -> str:
    if _is_union(hint):
        return " | ".join(type_label(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        inner = args[0].__name__ if _is_variadic(hint) else ", ".join(a.__name__ for a in args)
        return f"list[{inner}]"
    if is_dataclass(hint):
        return "mapping"
    return "null" if hint is _NONE_TYPE else hint.__name__


def _bounds_text(meta: dict) -> str:
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open")
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}]"
    return f"{'>' if lo_open else '>='} {lo}" if lo is not None else f"<= {hi}"


def constraint_text(meta: dict) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(meta["choices"])
    has_bounds = meta.get("lo") is not None or meta.get("hi") is not None
    return _bounds_text(meta) if has_bounds else ""


def check_leaf(hint, meta, value, source: str, path: str):
    """Type- and range-check one value; return it converted (floats, tuples)."""
    converted = _convert(hint, value)
    if converted is _NO_MATCH:
        got = f"{value!r} ({type(value).__name__})"
        raise RecipeError(f"{source}: '{path}' must be {_expected(hint)}, got {got}")
    if converted is None or not meta:
        return converted
    choices = meta.get("choices")
    # A list field with choices (output.report_to) checks each item.
    for item in converted if isinstance(converted, tuple) else (converted,):
        if choices and item not in choices:
            close = get_close_matches(str(item), list(choices), n=1)
            suggestion = f" (did you mean '{close[0]}'?)" if close else ""
            allowed = ", ".join(choices)
            raise RecipeError(
                f"{source}: '{path}' must be one of {allowed}; got {item!r}{suggestion}"
            )
    if isinstance(converted, tuple) and choices and len(set(converted)) != len(converted):
        raise RecipeError(f"{source}: '{path}' lists an entry twice: {list(converted)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(converted, (int, float)) and not isinstance(converted, bool):
        too_low = lo is not None and (converted <= lo if meta.get("lo_open") else converted < lo)
        if too_low or (hi is not None and converted > hi):
            raise RecipeError(f"{source}: '{path}' must be {_bounds_text(meta)}, got {converted!r}")
    return converted


def unknown_key(source: str, prefix: str, key, known: Sequence[str]) -> RecipeError:
    close = get_close_matches(str(key), list(known), n=1)
    suggestion = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    return RecipeError(f"{source}: unknown key '{prefix}{key}'{suggestion}")


def section_error(source: str, path: str, value) -> RecipeError:
    got = f"{value!r} ({type(value).__name__})"
    return RecipeError(f"{source}: '{path}' is a section and must be a mapping, got {got}")


def build_dataclass(cls: type, data: dict, prefix: str, source: str, overridden: dict[str, str]):
    """Construct ``cls`` from a mapping, checking keys, types and ranges recursively."""
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise unknown_key(source, prefix, key, names)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        path, value, hint = prefix + f.name, data[f.name], field_hints(cls)[f.name]
        if is_dataclass(hint):
            if value is not None and not isinstance(value, dict):
                raise section_error(source, path, value)
            kwargs[f.name] = build_dataclass(hint, value or {}, path + ".", source, overridden)
        elif section_choice(hint) and isinstance(value, dict):
            section, section_source = section_choice(hint), overridden.get(path, source)
            kwargs[f.name] = build_dataclass(section, value, path + ".", section_source, overridden)
        else:
            value_source = overridden.get(path, source)
            kwargs[f.name] = check_leaf(hint, f.metadata, value, value_source, path)
    return cls(**kwargs)


def leaves(obj, prefix: str = "") -> Iterator[tuple[str, typing.Any, dict, typing.Any]]:
    """Yield (dotted key, type hint, metadata, value) for every non-section field."""
    for f in fields(obj):
        hint, value = field_hints(type(obj))[f.name], getattr(obj, f.name)
        if is_dataclass(hint) or (section_choice(hint) and is_dataclass(value)):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hint, dict(f.metadata), value


def parse_override_value(hint, raw: str, source: str):
    """YAML-parse an override value; string fields fall back to the raw text."""
    accepts_str = str in (typing.get_args(hint) if _is_union(hint) else (hint,))
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if accepts_str:
            return raw
        raise RecipeError(f"{source}: cannot parse value {raw!r}: {exc}") from exc
    if section_choice(hint) and isinstance(value, dict):
        return value  # e.g. data.train={hub: openai/gsm8k, config: main}
    if accepts_str and not isinstance(value, str) and not (value is None and _is_union(hint)):
        return raw  # e.g. output.name=123 or a prompt containing ': '
    return value


def apply_override(
    root: type, data: dict, text: str, file_source: str, overridden: dict[str, str]
) -> None:
    """Set one ``key.path=value`` in the raw recipe mapping, checking the key path."""
    source = f"--set {text}"
    key, has_equals, raw = text.partition("=")
    key = key.strip()
    if not has_equals or not key:
        raise RecipeError(f"{source}: expected KEY=VALUE, e.g. training.learning_rate=1e-4")
    cls, node, parts = root, data, key.split(".")
    for depth, part in enumerate(parts):
        prefix, path = "".join(p + "." for p in parts[:depth]), ".".join(parts[: depth + 1])
        names = [f.name for f in fields(cls)]
        if part not in names:
            raise unknown_key(source, prefix, part, names)
        hint, is_last = field_hints(cls)[part], depth == len(parts) - 1
        if is_dataclass(hint) and is_last:
            example = f"{path}.{fields(hint)[0].name}"
            raise RecipeError(
                f"{source}: '{path}' is a section; set one of its keys, e.g. '{example}=...'"
            )
        section = hint if is_dataclass(hint) else section_choice(hint)
        if section and not is_last:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict) and section is not hint:
                raise RecipeError(
                    f"{source}: '{path}' is {child!r} in {file_source}, not a mapping; set it "
                    f"whole instead, e.g. --set '{path}={{{fields(section)[0].name}: ...}}'"
                )
            elif not isinstance(child, dict):
                raise section_error(file_source, path, child)
            node, cls = child, section
        elif not is_last:
            raise RecipeError(f"{source}: '{path}' is a value, not a section")
        else:
            node[part] = parse_override_value(hint, raw, source)
            overridden[key] = source


def format_default(value) -> str:
    if value is None or isinstance(value, bool):
        return str(value).lower().replace("none", "null")
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)
