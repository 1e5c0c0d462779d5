"""Training runs with clamps, for the clamped-training engine and the induction-formation analysis.

A run trains a plain native copy of a toy model (`models.unwrapped`) with clamps installed as torch hooks
(`circuits.clamps`), on the task's own training objective, and records the held-out loss along the way. Every
run of a comparison starts from the same weights and sees the same batches in the same order (one seed for
the data generator and torch), so differences between runs come from the clamps alone.

What a task provides for training (any of it may be missing):
- ``training_sample(generator) -> (inputs, targets)``: a training batch (token ids or float inputs);
- ``training_loss(outputs, targets)`` or ``loss(outputs, targets)``: the loss on full-sequence outputs;
  default: next-token cross-entropy over integer targets, ``-100`` ignored.
Without ``training_sample`` the batches come from ``task.batch`` (clean prompts), trained to put the answer
at the read-out position (cross-entropy), which needs integer answers.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from circuits import clamps as clamp_hooks
from circuits import training
from circuits.errors import IncompatibleModelError, InvalidOptionError

Sampler = Callable[[torch.Generator], tuple[Tensor, Tensor]]
HELD_OUT_OFFSET = 1_000_003  # the held-out generator's seed is the run's seed plus this: never a training batch


def next_token_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), ignore_index=-100)


@dataclass(frozen=True)
class Objective:
    """How to train a model on a task: a batch sampler and a loss on full-sequence outputs."""

    sample: Sampler
    loss: Callable[[Tensor, Tensor], Tensor]
    held_out_sample: Optional[Callable[[int, int], tuple[Tensor, Tensor]]] = None  # the task's test set, if any

    @classmethod
    def of(cls, task: Any, model: Any, batch_size: Optional[int] = None) -> "Objective":
        loss = getattr(task, "training_loss", None) or getattr(task, "loss", None) or next_token_loss
        sample = getattr(task, "training_sample", None)
        test = getattr(task, "held_out_sample", None)
        if sample is not None and batch_size is None:
            return cls(sample, loss, test)
        if sample is not None:
            return cls(_resized(task, batch_size), loss, test)
        return cls(_from_prompts(task, model, batch_size or 32), next_token_loss)

    def held_out(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """The task's ``held_out_sample(n, seed)`` if it has one (e.g. held-out label pairs), else at least `n`
        rows from a generator no training batch uses, cut to `n`."""
        if self.held_out_sample is not None:
            return self.held_out_sample(n, seed + HELD_OUT_OFFSET)
        generator = torch.Generator().manual_seed(seed + HELD_OUT_OFFSET)
        parts = [self.sample(generator)]
        while sum(p[0].shape[0] for p in parts) < n:
            parts.append(self.sample(generator))
        return torch.cat([p[0] for p in parts])[:n], torch.cat([p[1] for p in parts])[:n]


def _resized(task: Any, batch_size: int) -> Sampler:
    if not hasattr(task, "train_batch"):
        raise InvalidOptionError(f"task {task.name!r} has no train_batch to resize; leave batch_size=None")
    resized = dataclasses.replace(task, train_batch=batch_size)
    return resized.training_sample


def _from_prompts(task: Any, model: Any, batch_size: int) -> Sampler:
    probe = task.batch(model, n=1, seed=0)
    if probe.answer.is_floating_point():
        raise IncompatibleModelError(
            f"task {task.name!r} has no training_sample and float answers: clamped training cannot train on it")

    def sample(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        batch = task.batch(model, n=batch_size, seed=seed)
        targets = torch.full(batch.clean.shape[:2], -100, dtype=torch.long)
        targets[torch.arange(batch.size), batch.position] = batch.answer.long()
        return batch.clean, targets

    return sample


@dataclass(frozen=True)
class Settings:
    """What every run of a comparison shares."""

    steps: int = 1500
    lr: float = 1e-3
    weight_decay: float = 0.01
    eval_every: int = 25
    grad_clip: Optional[float] = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1:
            raise InvalidOptionError(f"steps and eval_every must be >= 1; got {self.steps}, {self.eval_every}")
        if not self.lr > 0:
            raise InvalidOptionError(f"lr must be > 0; got {self.lr}")


@dataclass
class Run:
    """One training run: its clamps, the held-out loss curve (step 0 included) and the trained module."""

    clamps: tuple
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    extra: list[dict[str, float]] = field(default_factory=list)
    module: Any = None

    @property
    def final_loss(self) -> float:
        return self.loss[-1]

    def crossing(self, threshold: float) -> Optional[int]:
        """The first evaluated step whose held-out loss is below `threshold` (None if it never is)."""
        return next((s for s, value in zip(self.steps, self.loss) if value < threshold), None)


def evaluate_loss(module: Any, objective: Objective, held_out: tuple[Tensor, Tensor]) -> float:
    inputs, targets = held_out
    device = next(module.parameters()).device
    with torch.no_grad():
        return objective.loss(training.outputs(module, inputs.to(device)), targets.to(device)).item()


def train_clamped(initial: Any, objective: Objective, clamps: Sequence[Any], settings: Settings,
                  held_out: tuple[Tensor, Tensor], *, measure: Optional[Callable[[Any], dict[str, float]]] = None,
                  keep_module: bool = False, progress: bool = False, description: str = "clamped run") -> Run:
    """Train a copy of the plain native module `initial` with `clamps` attached throughout (and during every
    evaluation). `measure(module)` adds numbers to each evaluation (e.g. induction strengths)."""
    module = copy.deepcopy(initial)
    run = Run(clamps=tuple(clamps))

    def evaluate(m: Any) -> dict[str, float]:
        value = evaluate_loss(m, objective, held_out)
        extra = measure(m) if measure is not None else {}
        if not math.isfinite(value):
            raise InvalidOptionError(f"held-out loss became {value} in {description}; lower lr")
        return {"held_out": value, **extra}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: more threads only add synchronisation on a shared CPU
    try:
        with clamp_hooks.attached(module, clamps):
            module.eval()
            first = evaluate(module)
            history = training.train(module, objective.sample, objective.loss, steps=settings.steps, lr=settings.lr,
                                     weight_decay=settings.weight_decay, seed=settings.seed,
                                     evaluate=evaluate, eval_every=settings.eval_every,
                                     grad_clip=settings.grad_clip, progress=progress, description=description)
    finally:
        torch.set_num_threads(threads)
    for record in [{"step": 0, **first}, *history]:
        run.steps.append(int(record["step"]))
        run.loss.append(float(record["held_out"]))
        run.extra.append({k: v for k, v in record.items() if k not in ("step", "held_out", "loss")})
    run.module = module if keep_module else None
    return run

