"""Leave the model as we found it: train/eval modes, hooks and requires_grad flags, even on error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from circuits import _compat


@dataclass
class Saved:
    """What `preserved` restores: every module's mode, every parameter's ``requires_grad``, every hook point's
    hooks. Recorded in one walk over the modules (a bridge has hundreds: its hook points are modules), which on
    small models is a measurable part of an engine's run."""

    modes: list[tuple[torch.nn.Module, bool]]
    grads: list[tuple[torch.nn.Parameter, bool]]
    handles: list[tuple[Any, list, list]]  # (hook point, its forward hooks, its backward hooks)

    @property
    def training(self) -> bool:
        """Whether any module was in training mode when the state was saved."""
        return any(training for _, training in self.modes)


@contextmanager
def preserved(model: Any) -> Iterator[Saved]:
    modes, grads = [], []
    for module in model.modules():
        modes.append((module, module.training))
        grads.extend((p, p.requires_grad) for p in module._parameters.values() if p is not None)
    handles = [(point, list(point.fwd_hooks), list(point.bwd_hooks)) for point in _compat.hook_points(model)]
    saved = Saved(modes, grads, handles)
    try:
        yield saved
    finally:
        for module, training in modes:
            if module.training != training:  # nn.Module.__setattr__ is slow; most modes did not change
                module.training = training
        for parameter, requires_grad in grads:
            if parameter.requires_grad != requires_grad:
                parameter.requires_grad_(requires_grad)
        for point, fwd, bwd in handles:
            _drop_new(point.fwd_hooks, fwd)
            _drop_new(point.bwd_hooks, bwd)


def _drop_new(current: list, before: list) -> None:
    if len(current) == len(before) and all(a is b for a, b in zip(current, before)):
        return
    kept = {id(h) for h in before}
    for handle in [h for h in current if id(h) not in kept]:
        handle.hook.remove()
        current.remove(handle)


def evaluation_mode(model: Any, saved: Saved) -> None:
    """Put `model` in eval mode, skipping the walk over every submodule (~5 ms on a bridge) when `saved` (the
    state `preserved` recorded) says it is already there; `preserved` restores the caller's modes afterwards."""
    if saved.training:
        model.eval()
