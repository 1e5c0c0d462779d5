"""Training runs with clamps, for the clamped-training engine and the induction-formation analysis.

A run trains a plain native copy of a toy model (`models.native_copy`) with clamps installed as torch hooks
(`circuits.clamps`), on the task's own training objective, and records the held-out loss along the way. Every
run of a comparison starts from the same weights and sees the same batches in the same order (one seed for
the data generator and torch), so differences between runs come from the clamps alone.

What a task provides for training is the `TrainableTask` protocol (`circuits._task`): a training sampler, a loss,
held-out rows and its optimiser settings (`TrainingDefaults` supplies all but the sampler). A task without it
(`trainable`) trains on its own prompts instead, to put the answer at the read-out position (cross-entropy),
which needs integer answers; a task that can do neither is refused with a typed error naming what it lacks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from circuits import clamps as clamp_hooks
from circuits import training
from circuits._task import (TrainableTask, TrainingDefaults, TrainingSettings, missing_training_members,
                            next_token_loss)
from circuits.errors import IncompatibleModelError, InvalidOptionError

Sampler = Callable[[torch.Generator], tuple[Tensor, Tensor]]
HELD_OUT_OFFSET = 1_000_003  # the held-out generator's seed is the run's seed plus this: never a training batch


@dataclass(frozen=True)
class PromptTraining(TrainingDefaults):
    """A plain task (no `TrainableTask` members) made trainable: its clean prompts as training batches, the
    answer as the target at each read-out position (-100 elsewhere)."""

    task: Any
    model: Any
    train_batch: int = 32

    @property
    def name(self) -> str:
        return self.task.name

    def batch(self, model: Any, n: int, seed: int) -> Any:
        return self.task.batch(model, n, seed)

    def metric(self, logits: Tensor, batch: Any) -> Tensor:
        return self.task.metric(logits, batch)

    def default_model(self) -> Any:
        return self.task.default_model()

    def training_sample(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        batch = self.task.batch(self.model, n=self.train_batch, seed=seed)
        targets = torch.full(batch.clean.shape[:2], -100, dtype=torch.long)
        targets[torch.arange(batch.size), batch.position] = batch.answer.long()
        return batch.clean, targets


def trainable(task: Any, model: Any, batch_size: Optional[int] = None) -> TrainableTask:
    """`task` itself (resized to `batch_size` if given) when it is a `TrainableTask`; else `PromptTraining` on its
    prompts where its answers are token ids; else `IncompatibleModelError` naming the members it lacks."""
    if isinstance(task, TrainableTask):
        return task if batch_size is None else task.resized(batch_size)
    missing = missing_training_members(task)
    if model is None or task.batch(model, n=1, seed=0).answer.is_floating_point():
        raise IncompatibleModelError(f"task {task.name!r} cannot be trained on: it lacks {', '.join(missing)} "
                                     "(circuits.TrainableTask), and float answers give no token targets to train "
                                     "on its prompts instead")
    return PromptTraining(task, model, batch_size or 32)


@dataclass(frozen=True)
class Objective:
    """How to train a model on a task: a batch sampler, a loss on full-sequence outputs, held-out rows."""

    sample: Sampler
    loss: Callable[[Tensor, Tensor], Tensor]
    held_out_sample: Callable[[int, int], tuple[Tensor, Tensor]]

    @classmethod
    def of(cls, task: Any, model: Any, batch_size: Optional[int] = None) -> "Objective":
        trained = trainable(task, model, batch_size)
        return cls(trained.training_sample, trained.training_loss, trained.held_out_sample)

    def held_out(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """`n` held-out rows for a run with `seed`: the task's ``held_out_sample`` with a seed no training batch
        uses (e.g. few_shot's held-out label pairs)."""
        return self.held_out_sample(n, seed + HELD_OUT_OFFSET)


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

    @classmethod
    def for_task(cls, task: Any, steps: int, eval_every: int, seed: int, lr: Optional[float] = None) -> "Settings":
        """The task's own optimiser settings (`TrainableTask.training_settings`; the defaults of
        `TrainingSettings` for a task trained on its prompts), with `lr` overriding the task's if given."""
        own = task.training_settings() if isinstance(task, TrainableTask) else TrainingSettings()
        return cls(steps=steps, lr=lr or own.lr, weight_decay=own.weight_decay, grad_clip=own.grad_clip,
                   eval_every=eval_every, seed=seed)


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



def plateau_loss(task: Any, baseline: Run, steps: int) -> float:
    """The loss of the task's plateau (`TrainingSettings.plateau_loss`) if it names one, else the unablated
    run's held-out loss at 10% of the steps."""
    own = task.training_settings().plateau_loss if isinstance(task, TrainableTask) else None
    if own is not None:
        return float(own)
    at = next(i for i, s in enumerate(baseline.steps) if s >= 0.1 * steps and s > 0)
    return baseline.loss[at]
