"""`discover`: run an engine on a model and a task, leaving the model as it was found."""

from __future__ import annotations

from typing import Any, Union

from circuits import engines
from circuits.errors import InvalidOptionError
from circuits.graph import HeadGraph
from circuits.state import preserved


def discover(model: Any, task: Any, engine: Union[str, Any] = "activation_patching", *, n: int = 32,
             seed: int = 0, **options: Any) -> HeadGraph:
    """Attribute `task`'s behaviour in `model` to heads. `engine` is a registry name (options as keyword
    arguments) or an engine instance."""
    if isinstance(engine, str):
        engine = engines.get(engine, **options)
    elif options:
        raise InvalidOptionError(f"options {sorted(options)} given with an engine instance; set them on the engine")
    if n < 1:
        raise InvalidOptionError(f"n must be >= 1; got {n}")
    with preserved(model):
        return engine.run(model, task, n=n, seed=seed)
