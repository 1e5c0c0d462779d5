"""Engine options from the command line: ``--option method=eap --option steps=10``, each value typed by the field of
the engine's dataclass it sets (bool, int, float, str, None where allowed, comma-separated sequences), checked
before any model loads."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Union

from circuits._registry import ENGINES
from circuits.errors import InvalidOptionError

TRUE, FALSE, NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null")


def parse(engine_name: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as the keyword options of engine `engine_name` (`InvalidOptionError` naming the option,
    the value and what was expected; an unknown option lists the valid ones)."""
    factory = ENGINES.factory(engine_name)  # UnknownNameError listing the engines
    if not dataclasses.is_dataclass(factory):
        raise InvalidOptionError(f"engine {engine_name!r} is not a dataclass of options; --option cannot set it")
    fields = {f.name: f for f in dataclasses.fields(factory) if f.init}
    hints = typing.get_type_hints(factory)
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InvalidOptionError(f"--option {pair!r}; expected KEY=VALUE, e.g. --option method=eap")
        if key not in fields:
            raise InvalidOptionError(f"{engine_name} has no option {key!r}; expected some of: {', '.join(fields)}")
        if key in options:
            raise InvalidOptionError(f"--option {key}= is given twice; expected each option once")
        options[key] = value(text, hints.get(key, str), f"--option {key}={text}")
    return options


def value(text: str, hint: Any, where: str) -> Any:
    """`text` as a value of type `hint`; `InvalidOptionError` naming `where` and the expected type otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if text.strip().lower() in NONE and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        sequences = [a for a in members if _is_sequence(a)]
        scalars = [a for a in members if not _is_sequence(a)]
        order = (sequences + scalars) if "," in text else (scalars + sequences)
        for member in order:
            try:
                return value(text, member, where)
            except InvalidOptionError:
                continue
        raise InvalidOptionError(f"{where}: expected {describe(hint)}")
    if _is_sequence(hint):
        item = args[0]
        if item not in (bool, int, float, str):
            raise _unsupported(where, hint)
        return tuple(value(part.strip(), item, where) for part in text.split(",") if part.strip())
    if hint is bool:
        if text.strip().lower() in TRUE + FALSE:
            return text.strip().lower() in TRUE
        raise InvalidOptionError(f"{where}: expected true or false")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise InvalidOptionError(f"{where}: expected an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise InvalidOptionError(f"{where}: expected a number") from None
    if hint is str:
        return text
    raise _unsupported(where, hint)


def _is_sequence(hint: Any) -> bool:
    origin = typing.get_origin(hint) or hint
    return origin in (tuple, list, Sequence, typing.Sequence) and hint is not str and bool(typing.get_args(hint))


def _unsupported(where: str, hint: Any) -> InvalidOptionError:
    return InvalidOptionError(f"{where}: an option of type {describe(hint)} cannot be given on the command line; "
                              "set it from Python or in a sweep spec")


def describe(hint: Any) -> str:
    """A type in words, for messages."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if _is_sequence(hint):
        return f"comma-separated values, each {describe(args[0])}"
    return getattr(hint, "__name__", str(hint))
