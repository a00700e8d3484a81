"""`key=value` command-line overrides of an experiment's `Config` dataclass.

Keys are field names; a field that is itself a dataclass is reached with a dotted key
(`synthetic.classes=20`). Each value is parsed by the field's annotation:

| annotation            | accepted text                                           |
|-----------------------|---------------------------------------------------------|
| `bool`                | true/false, yes/no, on/off, 1/0                         |
| `int`, `float`, `str` | as Python parses them (`1e-3`, `40`)                    |
| `X | None`            | `null` for None (also `none` unless X is str), else X   |
| `tuple[int, ...]`     | comma-separated, brackets optional: `64,128` or `(64,128)` |
| `Literal[...]`        | one of the listed values                                |

An unknown key raises ValueError listing every valid key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _nested_dataclass(tp: Any) -> type | None:
    """The dataclass a field annotation names (`X` or `X | None`), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def field_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted key of dataclass `cls` and its annotation, in declaration order."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        nested = _nested_dataclass(hints[f.name])
        if nested is not None:
            out.update(field_types(nested, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hints[f.name]
    return out


def parse_value(text: str, tp: Any) -> Any:
    """`text` parsed as annotation `tp`; ValueError when it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        if optional and text.strip().lower() == "null":
            return None
        errors = []
        for member in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, member)
            except ValueError as err:
                errors.append(str(err))
        if optional and text.strip().lower() == "none":
            return None
        raise ValueError("; ".join(errors))
    if origin is Literal:
        for choice in args:
            if str(choice) == text:
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, args))}, got {text!r}")
    if origin is tuple:
        inner = text.strip().strip("()[]").strip()
        parts = [p.strip() for p in inner.split(",") if p.strip()] if inner else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {text!r}")
        return tuple(parse_value(p, a) for p, a in zip(parts, args))
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if tp is str:
        return text
    raise TypeError(f"no override parser for annotation {tp!r}")


def _build(cls: type, base: Any, values: Mapping[str, Any]) -> Any:
    """A `cls` instance: `base` (or the defaults) with the dotted `values` replaced."""
    hints = typing.get_type_hints(cls)
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, inner in nested.items():
        current = getattr(base, head) if base is not None else None
        direct[head] = _build(_nested_dataclass(hints[head]), current, inner)
    if base is None:
        return cls(**direct)
    return dataclasses.replace(base, **direct)


def apply_overrides(cls: type, values: Mapping[str, Any], base: Any = None) -> Any:
    """`base` (default: `cls()`) with the dotted-key `values` replaced, keys checked first."""
    valid = field_types(cls)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(valid)}"
        )
    return _build(cls, cls() if base is None else base, values)


def parse_overrides(cls: type, args: Sequence[str], base: Any = None) -> Any:
    """`base` (default: `cls()`) with each `key=value` of `args` applied, typed by annotation."""
    valid = field_types(cls)
    values: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep or not key:
            raise ValueError(f"override {arg!r} is not of the form key=value")
        if key not in valid:
            raise ValueError(
                f"unknown key {key!r} for {cls.__name__}; valid keys: {', '.join(valid)}"
            )
        try:
            values[key] = parse_value(text, valid[key])
        except ValueError as err:
            raise ValueError(f"override {arg!r}: {err}") from None
    return apply_overrides(cls, values, base)
