"""What `import circuits` gives: every name in ``__all__`` exists, and no public module hides behind a function
of its own name (``import circuits.X as m`` must give the module X)."""

from __future__ import annotations

import importlib
import pkgutil
import types

import circuits


def test_every_exported_name_exists():
    assert all(hasattr(circuits, name) for name in circuits.__all__)
    assert callable(circuits.compare) and callable(circuits.sweep) and callable(circuits.discover)


def test_no_public_module_is_hidden_by_an_attribute_of_the_package():
    for info in pkgutil.iter_modules(circuits.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"circuits.{info.name}")
        attribute = getattr(circuits, info.name)
        assert isinstance(attribute, types.ModuleType) and attribute is module, (
            f"circuits.{info.name} is {attribute!r}, not the module")
