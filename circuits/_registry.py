"""Name -> factory registries that refuse duplicates and list valid names in their errors.

A registry reads its names from a group of package entry points (``tl_circuits.engines``, ``tl_circuits.tasks``;
see docs/plugins.md): listing names reads the installed distributions' metadata and imports nothing; a name's
module is imported when that name is asked for. ``register(name, factory)`` adds a name in this process, and a
``"module:attribute"`` name loads that attribute. The library's two registries are `ENGINES` and `TASKS`
(`circuits.engines.get` and `tasks.get` are their methods), so the library resolves task names without importing
the `tasks` package.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, Optional, TypeVar

from circuits.errors import DuplicateNameError, MissingOptionError, PluginImportError, UnknownNameError

T = TypeVar("T")
_MODULE_ATTRIBUTE = re.compile(r"^[\w.]+:[\w.]+$")


@dataclass(frozen=True)
class _Entry:
    source: str  # where the name comes from, for DuplicateNameError and PluginImportError
    value: Optional[str] = None  # an entry point's "module:attribute" (imported when asked for)
    factory: Optional[Callable[..., Any]] = None  # or a factory given to `register`


class Registry(Generic[T]):
    """Names -> factories. ``get(name, **options)`` calls the factory, ``factory(name)`` returns it uncalled,
    ``names()`` lists the names, ``register(name, factory)`` adds one. With a `group`, the names of that entry-point
    group of every installed distribution come first; two sources of one name raise `DuplicateNameError`."""

    def __init__(self, kind: str, group: Optional[str] = None):
        self.kind, self.group = kind, group
        self._registered: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r})"

    def register(self, name: str, factory: Callable[..., T]) -> Callable[..., T]:
        """Add `name` in this process; `DuplicateNameError` (naming both sources) if it is taken."""
        entry = _Entry(source=f"register() of {_qualified(factory)}", factory=factory)
        _add(self.kind, self._entries(), name, entry)  # raises if taken
        self._registered[name] = entry
        return factory

    def get(self, name: str, **options: Any) -> T:
        """The factory of `name` called with `options` (e.g. an engine with its options, a task); a factory that
        needs an option not given (the ``prompts`` task's ``source``) raises `MissingOptionError` naming it."""
        factory = self.factory(name)
        missing = _required(factory, options)
        if missing:
            raise MissingOptionError(f"{self.kind} {name!r} needs the option{'s' if len(missing) > 1 else ''} "
                                     f"{', '.join(missing)}; expected e.g. get({name!r}, {missing[0]}=...)")
        return factory(**options)

    def factory(self, name: str) -> Callable[..., T]:
        """What `name` stands for, uncalled: its module is imported now (`PluginImportError` with the real error if
        that fails); `UnknownNameError` listing the valid names for a name no one declared."""
        entries = self._entries()
        if name in entries:
            entry = entries[name]
            return entry.factory if entry.factory is not None else _load(self.kind, name, entry.value, entry.source)
        if _MODULE_ATTRIBUTE.match(name):
            return _load(self.kind, name, name, "a 'module:attribute' name")
        raise UnknownNameError(self.kind, name, sorted(entries) or [self._nothing_declared()])

    def names(self) -> list[str]:
        """Every name, sorted (entry points and `register`ed names; no module is imported)."""
        return sorted(self._entries())

    def _entries(self) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        for point in metadata.entry_points(group=self.group) if self.group else ():
            _add(self.kind, entries, point.name, _Entry(source=_declared_by(point), value=point.value))
        for name, entry in self._registered.items():
            _add(self.kind, entries, name, entry)
        return entries

    def _nothing_declared(self) -> str:
        return (f"(none: no installed distribution declares entry points in the group {self.group!r}; "
                "is tl-circuits installed? pip install -e .)")


def _required(factory: Callable[..., Any], options: dict[str, Any]) -> list[str]:
    """The parameters of `factory` that have no default and are not in `options` (none where it has no signature)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in kinds and p.default is p.empty and p.name not in options]


def _add(kind: str, entries: dict[str, _Entry], name: str, entry: _Entry) -> None:
    if name in entries:
        raise DuplicateNameError(f"{kind} {name!r} comes from two places: {entries[name].source}, and "
                                 f"{entry.source}; expected one (rename one of them)")
    entries[name] = entry


def _declared_by(point: metadata.EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    where = f"distribution {dist.name} {dist.version}" if dist is not None else "an installed distribution"
    return f"entry point {point.value!r} of {where}"


def _qualified(factory: Callable[..., Any]) -> str:
    module, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    return f"{module}:{name}" if module and name else repr(factory)


def _load(kind: str, name: str, value: str, source: str) -> Any:
    """``module:attribute`` imported; an ImportError or AttributeError becomes a `PluginImportError` that quotes it."""
    module_name, _, attribute = (part.strip() for part in value.partition(":"))
    try:
        target = importlib.import_module(module_name)
        for part in attribute.split(".") if attribute else ():
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise PluginImportError(f"cannot load {kind} {name!r} from {source}: {type(error).__name__}: {error}"
                                f"{_hint(error, module_name)}") from error
    return target


def _hint(error: BaseException, module_name: str) -> str:
    """Why the named module itself is missing, where that can be told (not for a module the plugin imports)."""
    missing = getattr(error, "name", None)
    if not isinstance(error, ModuleNotFoundError) or not missing:
        return ""
    if module_name != missing and not module_name.startswith(missing + "."):
        return ""
    top, cwd = module_name.split(".")[0], Path.cwd()
    in_cwd = (cwd / f"{top}.py").is_file() or (cwd / top / "__init__.py").is_file()
    if in_cwd and not any(Path(entry or ".").resolve() == cwd.resolve() for entry in sys.path):
        return (f" ({top!r} is in the working directory {cwd}, which is not on sys.path: the `circuits` command "
                "does not add it; run with PYTHONPATH=. or install the package)")
    return f" (is the package that provides {top!r} installed, or its folder on PYTHONPATH?)"


ENGINES: Registry[Any] = Registry("engine", "tl_circuits.engines")
TASKS: Registry[Any] = Registry("task", "tl_circuits.tasks")
