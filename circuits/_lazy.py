"""Lazy exports (PEP 562): a package's public names import their module on first use.

So ``import circuits`` (and ``circuits --help``, ``circuits tasks``) imports neither torch nor TransformerLens;
``circuits.discover`` imports what a run needs when it is first touched. Each package keeps its ``__all__`` and an
``if TYPE_CHECKING:`` block with the same imports, for type checkers and the API reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any, Optional


def exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for `package`, where `names` maps each public name to the module it comes
    from (a name that is itself a submodule maps to ``"package.name"``). Any other submodule is imported when it is
    first read as an attribute (``circuits.graph``, ``tasks.facts``), as it was when the package imported it."""

    def __getattr__(name: str) -> Any:
        source = names.get(name) or _submodule(package, name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(source)
        value = module if source == f"{package}.{name}" else getattr(module, name)
        setattr(sys.modules[package], name, value)  # the next lookup finds it without __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__


def _submodule(package: str, name: str) -> Optional[str]:
    if name.startswith("__") or not name.isidentifier():  # probes such as __wrapped__ are never submodules
        return None
    return f"{package}.{name}" if importlib.util.find_spec(f"{package}.{name}") is not None else None
