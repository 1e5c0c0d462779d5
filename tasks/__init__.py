"""Task registry: ``get(name)`` returns a task; ``names()`` lists them."""

from __future__ import annotations

from typing import Any

from circuits.registry import Registry
from tasks.icl_regression import ICLRegression
from tasks.induction import Induction

_TASKS: Registry[Any] = Registry("task")
_TASKS.register("induction", Induction)
_TASKS.register("icl_regression", ICLRegression)


def get(name: str, **options: Any) -> Any:
    return _TASKS.get(name, **options)


def names() -> list[str]:
    return _TASKS.names()


def register(name: str, factory: Any) -> Any:
    """Add a task under `name` (refuses a name already taken)."""
    return _TASKS.register(name, factory)


__all__ = ["Induction", "get", "names", "register"]
