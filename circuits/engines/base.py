"""The engine contract, and the session and prompts every engine runs with.

An engine is a frozen dataclass of validated options (`options` checks their names) with

- ``name`` and ``score_meaning`` (what its node and edge scores mean, in words);
- ``measure(model, task, batch) -> Measurement``: its values on a batch you already have, unnormalised, inside
  its own `session` (the model's modes, hooks and ``requires_grad`` flags restored afterwards, also on error);
- ``graph(model, measurement) -> HeadGraph``: those values normalised (`kit.Baseline.normalise`) as a graph;
- ``run(model, task, n, seed) -> HeadGraph``: the task's prompts measured and drawn as a graph with its record
  (`graph_meta`); `EngineBase` gives every engine this ``run``.

The engine kit (`circuits.engines.kit`) holds the pieces engines compute with: runs, baselines, budgets.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Optional, Protocol, runtime_checkable

import torch

from circuits._state import evaluation_mode, preserved
from circuits._task import PromptBatch, check_task
from circuits._version import package_version
from circuits.engines import kit
from circuits.engines.kit import Baseline, Measurement, on_model
from circuits.errors import InvalidOptionError, RenamedOptionError
from circuits.graph import HeadGraph
from circuits.nodes import config_of


@runtime_checkable
class Engine(Protocol):
    """What `circuits.discover`, `compare` and `sweep` rely on. Engines are frozen dataclasses (their options
    go into every graph's ``meta["options"]`` through `dataclasses.asdict`)."""

    name: ClassVar[str]

    @property
    def score_meaning(self) -> str: ...

    def measure(self, model: Any, task: Any, batch: PromptBatch) -> Measurement: ...

    def graph(self, model: Any, measurement: Measurement) -> HeadGraph: ...

    def run(self, model: Any, task: Any, n: int = 32, seed: int = 0) -> HeadGraph: ...


class EngineBase:
    """``run`` for every engine: the task's `n` prompts for `seed`, measured, normalised into a graph, with
    the record `graph_meta` writes (``n`` is the number of prompts measured)."""

    def run(self, model: Any, task: Any, n: int = 32, seed: int = 0) -> HeadGraph:
        self.check(model)  # a model the engine cannot read fails before any work
        with session(model):
            batch = task_batch(model, task, n, seed)
        with kit.gap_required():  # no gap between clean and corrupted: refused before the long work
            measurement = self.measure(model, task, batch)
        return self.recorded(model, task, seed, measurement)

    def recorded(self, model: Any, task: Any, seed: int, measurement: Measurement) -> HeadGraph:
        """`measurement` as a graph (``self.graph``) with its record (`graph_meta`; the engine's own meta wins)."""
        graph = self.graph(model, measurement)
        record = graph_meta(self, model, task, n=measurement.batch.size, seed=seed, score=self.score_meaning,
                            clean=measurement.clean, corrupted=measurement.corrupted)
        graph.meta.update(record | graph.meta)
        return graph

    def check(self, model: Any) -> None:
        """Refuse a model the engine cannot work with (typed error); the default accepts every model."""


def options(renamed: Optional[dict[str, str]] = None) -> Any:
    """Class decorator for an engine's (or task's) dataclass: keyword options that are not fields raise
    `InvalidOptionError` listing the valid ones, and names in `renamed` (old -> new) raise
    `RenamedOptionError` naming the new one. Put it above ``@dataclass``."""
    renamed = renamed or {}

    def decorate(cls: type) -> type:
        init = cls.__init__
        valid = [field.name for field in dataclasses.fields(cls) if field.init]
        label = getattr(cls, "name", cls.__name__)

        @functools.wraps(init)
        def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
            for key in kwargs:
                if key in renamed:
                    raise RenamedOptionError(f"{label} option", key, f"{renamed[key]!r} (see CHANGELOG.md)")
                if key not in valid:
                    raise InvalidOptionError(f"{label} has no option {key!r}; expected some of: {', '.join(valid)}")
            init(self, *args, **kwargs)

        cls.__init__ = checked_init
        return cls

    return decorate


@contextmanager
def session(model: Any, *, grad: bool = False) -> Iterator[Any]:
    """State preserved (modes, hooks, ``requires_grad``, also on error), eval mode, autograd off unless `grad`."""
    with preserved(model) as saved, torch.set_grad_enabled(grad):
        evaluation_mode(model, saved)
        yield model


def task_batch(model: Any, task: Any, n: int, seed: int) -> PromptBatch:
    """The task's batch of `n` prompts for `seed` (a warning when the task returns fewer)."""
    check_task(task)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidOptionError(f"n must be a positive number of prompts; got {n!r}")
    batch = task.batch(model, n=n, seed=seed)
    if batch.size < n:
        warnings.warn(f"task {task.name!r} returned {batch.size} prompts where {n} were asked for; the graph's "
                      f"meta records n={batch.size}", stacklevel=3)
    return batch


def prompts(model: Any, task: Any, n: int, seed: int) -> PromptBatch:
    """The task's batch of `n` prompts, ready for `model` (`on_model`)."""
    return on_model(model, task_batch(model, task, n, seed))


def graph_meta(engine: Any, model: Any, task: Any, *, n: int, seed: int, score: str,
               clean: Optional[float] = None, corrupted: Optional[float] = None, **results: Any) -> dict[str, Any]:
    """The record every HeadGraph carries: engine and options, task, model, n, seed, version, what the
    scores mean (`score`, in words) and the clean and corrupted metric means where there are some."""
    meta = {"engine": engine.name, "options": dataclasses.asdict(engine), "task": task.name,
            "model": getattr(config_of(model), "model_name", None) or type(model).__name__,
            "n": n, "seed": seed, "version": package_version(), "score": score}
    if clean is not None:
        meta.update(metric_clean=clean, metric_corrupted=corrupted)
    return {**meta, **results}


__all__ = ["Baseline", "Engine", "EngineBase", "Measurement", "graph_meta", "on_model", "options", "prompts",
           "session", "task_batch"]
