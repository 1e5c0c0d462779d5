"""The Ray backend of `circuits.sweep` (the ``[ray]`` extra; imported only when ``backend="ray"``).

One actor per group of cells that share a model (`Cell.group`; ``replicas`` actors where the model asks for
them): it loads the model on its first cell and keeps it for the rest. Retries are Ray's own: an actor whose process dies is restarted (``max_restarts``) and the
calls it had not finished are sent again (``max_task_retries``). Exceptions inside a cell are not retried: the
actor returns them as error records (`CellRunner.run`). Results come back to the driver as they finish
(``ray.wait``), which writes each cell's folder, so workers need no shared filesystem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from circuits.errors import MissingDependencyError
from circuits.sweeps import Cell, CellRunner, crash_result


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("backend='ray' needs Ray; install it with `pip install -e '.[ray]'`") from None
    return ray


def run(groups: dict[str, list[Cell]], on_result: Callable[[Cell, dict[str, Any]], None], *, retries: int,
        address: Optional[str] = None, recorded: Optional[dict[str, dict[str, str]]] = None) -> None:
    """Run every group's cells on its own actor and hand each result to `on_result` as it arrives (`recorded`: the
    fingerprints of done cells, by key, which their actor checks before running them again).
    Starts Ray (``ray.init(address=address)``) unless it is already initialised, and then stops it again."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        _run_actors(ray, groups, on_result, retries, recorded or {})
    finally:
        if started:
            ray.shutdown()


def replicated(groups: dict[str, list[Cell]]) -> dict[str, list[Cell]]:
    """Each group split over its model's ``replicas`` actors, cells dealt round-robin."""
    split: dict[str, list[Cell]] = {}
    for group, cells in groups.items():
        replicas = min(cells[0].model.replicas, len(cells))
        for i, cell in enumerate(cells):
            split.setdefault(f"{group}#{i % replicas}", []).append(cell)
    return split


def _run_actors(ray: Any, groups: dict[str, list[Cell]], on_result: Callable[[Cell, dict[str, Any]], None],
                retries: int, recorded: dict[str, dict[str, str]]) -> None:
    worker_class = ray.remote(CellRunner)
    pending: dict[Any, tuple[Cell, str]] = {}
    actors: dict[str, Any] = {}
    left: dict[str, int] = {}
    for group, cells in replicated(groups).items():
        model = cells[0].model
        actors[group] = worker_class.options(num_cpus=model.num_cpus, num_gpus=model.num_gpus,
                                             max_restarts=retries, max_task_retries=retries).remote()
        left[group] = len(cells)
        for cell in cells:  # an actor runs its calls one at a time, in order
            pending[actors[group].run.remote(cell, recorded.get(cell.key))] = (cell, group)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        cell, group = pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as error:  # the process died on every attempt
            result = crash_result(cell, error, attempts=retries + 1)
        on_result(cell, result)
        left[group] -= 1
        if not left[group]:  # free its CPUs/GPUs (and the model's memory) for groups still waiting
            ray.kill(actors.pop(group))

