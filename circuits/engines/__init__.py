"""Engine registry: ``get(name, **options)`` builds an engine; ``names()`` lists them.

An engine is a frozen dataclass of its options with ``run(model, task, n, seed) -> HeadGraph``
(the `Engine` protocol, `circuits.engines.base`).
"""

from __future__ import annotations

from circuits._registry import Registry
from circuits.engines.activation_patching import ActivationPatching
from circuits.engines.base import Engine
from circuits.engines.cdt import CDT
from circuits.engines.clamped_training import ClampedTraining
from circuits.engines.edge_attribution import EdgeAttribution
from circuits.engines.path_patching import PathPatching

_ENGINES: Registry[Engine] = Registry("engine")
_ENGINES.register("activation_patching", ActivationPatching)
_ENGINES.register("path_patching", PathPatching)
_ENGINES.register("edge_attribution", EdgeAttribution)
_ENGINES.register("cdt", CDT)
_ENGINES.register("clamped_training", ClampedTraining)


def for_trained_models() -> list[str]:
    """The engines that score a trained model's heads as they are: every registered engine except those that
    train copies of the model themselves (``trains = True``, e.g. `clamped_training`). `compare` and the engine
    tour use these."""
    return [name for name in _ENGINES.names() if not getattr(_ENGINES.get(name), "trains", False)]


# The registry's own methods are the public functions (``register`` refuses a name already taken).
get = _ENGINES.get
names = _ENGINES.names
register = _ENGINES.register

__all__ = ["ActivationPatching", "CDT", "ClampedTraining", "EdgeAttribution", "Engine", "PathPatching", "for_trained_models",
           "get", "names", "register"]
