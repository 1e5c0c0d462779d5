"""Engine registry: ``get(name, **options)`` builds an engine; ``names()`` lists them.

An engine is a frozen dataclass of its options with ``run(model, task, n, seed) -> HeadGraph``.
"""

from __future__ import annotations

from typing import Any

from circuits.engines.activation_patching import ActivationPatching
from circuits.engines.path_patching import PathPatching
from circuits.registry import Registry

_ENGINES: Registry[Any] = Registry("engine")
_ENGINES.register("activation_patching", ActivationPatching)
_ENGINES.register("path_patching", PathPatching)


def get(name: str, **options: Any) -> Any:
    return _ENGINES.get(name, **options)


def names() -> list[str]:
    return _ENGINES.names()


def register(name: str, factory: Any) -> Any:
    """Add an engine under `name` (refuses a name already taken)."""
    return _ENGINES.register(name, factory)


__all__ = ["ActivationPatching", "PathPatching", "get", "names", "register"]
