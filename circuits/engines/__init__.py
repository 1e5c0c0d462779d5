"""Engine registry: ``get(name, **options)`` builds an engine; ``names()`` lists them; ``register(name, factory)``.

An engine is a frozen dataclass of its options with ``run(model, task, n, seed) -> HeadGraph``
(the `Engine` protocol, `circuits.engines.base`). Engines are the entry points of the group
``tl_circuits.engines`` of every installed distribution (this one's in pyproject.toml; another package declares
its own the same way, docs/plugins.md); an engine's module is imported when its name is asked for, and the classes
below on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from circuits import _lazy
from circuits._registry import ENGINES

if TYPE_CHECKING:  # the same names, for type checkers and the API reference
    from circuits.engines.activation_patching import ActivationPatching
    from circuits.engines.base import Engine
    from circuits.engines.cdt import CDT
    from circuits.engines.clamped_training import ClampedTraining
    from circuits.engines.edge_attribution import EdgeAttribution
    from circuits.engines.path_patching import PathPatching


def for_trained_models() -> list[str]:
    """The engines that score a trained model's heads as they are: every registered engine except those that
    train copies of the model themselves (``trains = True``, e.g. `clamped_training`). `compare` and the engine
    tour use these. Imports every engine's module."""
    return [name for name in ENGINES.names() if not getattr(ENGINES.factory(name), "trains", False)]


# The registry's own methods are the public functions (``register`` refuses a name already taken).
get = ENGINES.get
names = ENGINES.names
register = ENGINES.register

__all__ = ["ActivationPatching", "CDT", "ClampedTraining", "EdgeAttribution", "Engine", "PathPatching",
           "for_trained_models", "get", "names", "register"]

__getattr__, __dir__ = _lazy.exports(__name__, {
    "ActivationPatching": "circuits.engines.activation_patching", "CDT": "circuits.engines.cdt",
    "ClampedTraining": "circuits.engines.clamped_training", "EdgeAttribution": "circuits.engines.edge_attribution",
    "Engine": "circuits.engines.base", "PathPatching": "circuits.engines.path_patching",
})
