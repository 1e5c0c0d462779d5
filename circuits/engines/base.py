"""The engine contract and the one preparation step engines share.

An engine is a frozen dataclass of validated options with a ``name`` and
``run(model, task, n, seed) -> HeadGraph``. Its ``run`` sits inside `session` (the model's modes, hooks
and ``requires_grad`` flags restored afterwards, also on error; eval mode; autograd off unless the engine
asks for it) and gets its prompts from `prompts` (built by the task, validated against the model, on the
model's input device). Patching engines get all of that, plus the cached base and source runs, from
`patch_runs`; `graph_meta` writes the record every HeadGraph carries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, ClassVar, Optional, Protocol, runtime_checkable

import torch

from circuits import forward
from circuits._version import package_version
from circuits.engines.kit import Baseline, PatchRuns
from circuits._state import evaluation_mode, preserved
from circuits._task import PromptBatch
from circuits.errors import InvalidOptionError
from circuits.graph import HeadGraph


@runtime_checkable
class Engine(Protocol):
    """What `circuits.discover` runs: ``name`` and ``run(model, task, n, seed) -> HeadGraph``."""

    name: ClassVar[str]

    def run(self, model: Any, task: Any, n: int = 32, seed: int = 0) -> HeadGraph: ...


@contextmanager
def session(model: Any, *, grad: bool = False) -> Iterator[Any]:
    """State preserved (modes, hooks, ``requires_grad``, also on error), eval mode, autograd off unless `grad`."""
    with preserved(model), torch.set_grad_enabled(grad):
        evaluation_mode(model)
        yield model


def prompts(model: Any, task: Any, n: int, seed: int) -> PromptBatch:
    """The task's batch of `n` prompts, validated against `model` and moved to its input device."""
    if not isinstance(n, int) or n < 1:
        raise InvalidOptionError(f"n must be a positive number of prompts; got {n!r}")
    return on_model(model, task.batch(model, n=n, seed=seed))


def on_model(model: Any, batch: PromptBatch) -> PromptBatch:
    """`batch` validated against `model` (typed errors naming the bad value) and on its input device."""
    batch.validate(model)
    return batch.to(forward.input_device(model))


@contextmanager
def patch_runs(model: Any, task: Any, direction: str, *, n: Optional[int] = None, seed: int = 0,
               batch: Optional[PromptBatch] = None) -> Iterator[PatchRuns]:
    """The shared step of patching engines, inside `session`: prompts (the task's `n`, or a `batch` you
    built) and the cached base and source runs. ``runs.baseline()`` is the normalisation (it raises
    `UndefinedScoreError` when clean and corrupted metrics are equal: call it first to fail fast)."""
    with session(model):
        batch = prompts(model, task, n, seed) if batch is None else on_model(model, batch)
        runs = PatchRuns.prepare(model, task, batch, direction)
        yield runs


def graph_meta(engine: Any, model: Any, task: Any, *, n: int, seed: int, score: str,
               baseline: Optional[Baseline] = None, **results: Any) -> dict[str, Any]:
    """The record every HeadGraph carries: engine and options, task, model, n, seed, version, what the
    scores mean (`score`, in words) and the clean and corrupted metric means when there is a baseline."""
    meta = {"engine": engine.name, "options": asdict(engine), "task": task.name,
            "model": getattr(model.cfg, "model_name", None) or type(model).__name__,
            "n": n, "seed": seed, "version": package_version(), "score": score}
    if baseline is not None:
        meta.update(metric_clean=baseline.clean, metric_corrupted=baseline.corrupted)
    return {**meta, **results}
