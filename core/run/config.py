"""Config parsing: `key=value` overrides of an experiment's `Config` dataclass, its `--help`, and
the config of an experiment by name (what a sweep's pre-flight calls for every grid point).

Keys are field names; a field that is itself a dataclass is reached with a dotted key
(`cbp.replacement_rate`). Each value is parsed by the field's annotation:

| annotation            | accepted text                                              |
|-----------------------|------------------------------------------------------------|
| `bool`                | true/false, yes/no, on/off, 1/0                            |
| `int`, `float`, `str` | as Python parses them (`1e-3`, `40`)                       |
| `X | None`            | `null` for None (also `none` unless X is str), else X      |
| `tuple[int, ...]`     | comma-separated, brackets optional: `64,128` or `(64,128)` |
| `Literal[...]`        | one of the listed values                                   |

An unknown key raises ValueError listing every valid key; a value a spec refuses raises the spec's
ValueError with the key's path (`cbp.util_type='contrib'; valid: ...`). Both happen while the
config is built, before any work starts. This module imports neither torch nor an experiment until
`experiment_module` is called.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, Literal

from core.run.schema import EXPERIMENTS

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_FIELD_MESSAGE = re.compile(r"^\w+(\[\d+\])?=")  # a spec's "<field>=<value>; valid: ..." message


def _nested_dataclass(tp: Any) -> type | None:
    """The dataclass a field annotation names (`X` or `X | None`), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of dataclass `cls` (resolving them is slow, and a sweep's plan
    builds thousands of configs of a few classes)."""
    return typing.get_type_hints(cls)


def field_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted key of dataclass `cls` and its annotation, in declaration order."""
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        nested = _nested_dataclass(hints[f.name])
        if nested is not None:
            out.update(field_types(nested, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hints[f.name]
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Each field's one-line doc: its `metadata["doc"]`, else the comment after it in the source
    of the class (or of the base class) that declares it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                for line in lines[node.lineno - 1 : node.end_lineno]:
                    _, sep, comment = line.partition("  # ")
                    if sep:
                        docs[node.target.id] = comment.strip()
                        break
    for f in dataclasses.fields(cls):
        if f.metadata.get("doc"):
            docs[f.name] = f.metadata["doc"]
    return docs


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
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            kind = "an integer" if tp is int else "a number"
            raise ValueError(f"expected {kind}, got {text!r}") from None
    if tp is str:
        return text
    raise TypeError(f"no override parser for annotation {tp!r}")


def _build(cls: type, base: Any, values: Mapping[str, Any]) -> Any:
    """A `cls` instance: `base` with the dotted `values` replaced; a nested spec's ValueError
    is re-raised with the key's path."""
    hints = _hints(cls)
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, inner in nested.items():
        try:
            direct[head] = _build(_nested_dataclass(hints[head]), getattr(base, head), inner)
        except ValueError as err:
            message = str(err)
            sep = "." if _FIELD_MESSAGE.match(message) else ": "
            raise ValueError(f"{head}{sep}{message}") from None
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


def parse_assignments(cls: type, args: Sequence[str]) -> dict[str, Any]:
    """Each `key=value` of `args` as `{dotted key: value}`, typed by the annotation of that key of
    dataclass `cls`; ValueError for a malformed item, an unknown key (listing the valid ones) or a
    value that does not fit its type."""
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
        except (TypeError, ValueError) as err:
            raise ValueError(f"override {arg!r}: {err}") from None
    return values


def parse_overrides(cls: type, args: Sequence[str], base: Any = None) -> Any:
    """`base` (default: `cls()`) with each `key=value` of `args` applied, typed by annotation."""
    return apply_overrides(cls, parse_assignments(cls, args), base)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{_type_name(args[0])},..."
        return ",".join(_type_name(a) for a in args)
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _help_lines(cls: type, instance: Any, prefix: str) -> list[str]:
    hints = _hints(cls)
    docs = field_docs(cls)
    lines = []
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        nested = _nested_dataclass(hints[f.name])
        if nested is not None:
            lines += _help_lines(nested, value, f"{prefix}{f.name}.")
            continue
        head = f"  {prefix}{f.name}={_text(value)}  ({_type_name(hints[f.name])})"
        doc = docs.get(f.name, "")
        lines.append(f"{head:<48} {doc}".rstrip() if doc else head)
    return lines


def config_help(cls: type) -> str:
    """Every key of `cls` with its default, type and one-line doc, one key a line."""
    return "\n".join(_help_lines(cls, cls(), ""))


def experiment_module(experiment: str) -> ModuleType:
    """`core.experiments.<experiment>` (its `Config` and `run(cfg, sink)`)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; valid: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"core.experiments.{experiment}")


def experiment_config(experiment: str, values: Mapping[str, Any]) -> Any:
    """The validated `Config` of `experiment` with the dotted-key `values` (typed values, as a
    sweep's grid point holds them); ValueError naming the key and the valid values."""
    return apply_overrides(experiment_module(experiment).Config, values)
