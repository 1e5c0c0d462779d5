"""`discover`: run an engine on a model and a task."""

from __future__ import annotations

from typing import Any, Union

from circuits import engines
from circuits._task import check_task
from circuits.engines.base import Engine
from circuits.errors import InvalidOptionError
from circuits.graph import HeadGraph


def discover(model: Any, task: Any, engine: Union[str, Engine] = "activation_patching", *, n: int = 32,
             seed: int = 0, **options: Any) -> HeadGraph:
    """Attribute `task`'s behaviour in `model` to heads. `engine` is a registry name (options as keyword
    arguments) or an engine instance. The engine leaves the model as it found it (see `engines.base.session`)."""
    check_task(task)  # a task's name instead of the task: a typed error before anything runs
    if isinstance(engine, str):
        engine = engines.get(engine, **options)
    elif options:
        raise InvalidOptionError(f"options {sorted(options)} given with an engine instance; set them on the engine")
    return engine.run(model, task, n=n, seed=seed)
