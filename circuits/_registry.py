"""A name -> factory registry that refuses duplicates and lists valid names in its errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from circuits.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T]) -> Callable[..., T]:
        if name in self._factories:
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered")
        self._factories[name] = factory
        return factory

    def get(self, name: str, **options: object) -> T:
        if name not in self._factories:
            raise UnknownNameError(self.kind, name, self.names())
        return self._factories[name](**options)

    def names(self) -> list[str]:
        return sorted(self._factories)
