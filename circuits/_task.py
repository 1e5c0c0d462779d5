"""The contract between tasks and engines: `PromptBatch`, the `Task` protocol, and `TrainableTask` for the
engines that train (clamped training).

Engines import this module, never the `tasks` package: any object with the members of `Task` is a task (no
`isinstance` checks against our classes; the protocols are structural). `TrainingDefaults` gives a task the
optional parts of `TrainableTask` (next-token loss, held-out batches from the training sampler, AdamW settings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Optional, Protocol, Union, runtime_checkable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from circuits.errors import InvalidBatchError, InvalidTaskError

Tokens = Int[Tensor, "batch pos"]
Embeddings = Float[Tensor, "batch pos d_in"]
Inputs = Union[Tokens, Embeddings]


@dataclass(frozen=True, eq=False)
class PromptBatch:
    """Clean and corrupted prompts with what to read out of them.

    clean, corrupted: token ids ``[batch, pos]``, or float inputs ``[batch, pos, d_model]`` for
        continuous-input tasks (they enter the residual stream directly, see `circuits.forward`).
    answer: the right answer per prompt (token ids, float targets, or one row per prompt, e.g. a mask of the
        tokens allowed next ``[batch, d_vocab]``).
    foil: an optional competing answer (e.g. what copying the corrupted prompt would give).
    position: the read-out position of each prompt.
    full_length: the prompts' length before `trimmed` dropped the positions no read-out can see (None: the
        prompts are whole); `n_positions` reads it.
    clean_logprobs: optional log-probabilities of the model's clean run at each read-out position
        ``[batch, d_vocab_out]``, for metrics that compare a run with the clean distribution
        (`circuits.metrics.kl_divergence`; `circuits.metrics.clean_logprobs` computes them).
    spans, span_names: optional named spans of each prompt (positional circuits, docs/positional.md): `spans`
        ``[batch, pos]`` holds the index into `span_names` of each token's span, so that prompts of different
        lengths share positions ("IO", "S2", "end", ...). Every position belongs to exactly one span: tokens the task
        does not label (padding included) go to a span named ``"other"`` (`OTHER`), listed like the rest.
    """

    # Plain `Tensor` fields: `validate` checks shapes with typed errors that name the bad values.
    clean: Tensor
    corrupted: Tensor
    answer: Tensor
    position: Tensor
    foil: Optional[Tensor] = None
    full_length: Optional[int] = None
    clean_logprobs: Optional[Tensor] = None
    spans: Optional[Tensor] = None
    span_names: Optional[tuple[str, ...]] = None

    PER_PROMPT = ("answer", "position", "foil", "clean_logprobs", "spans")  # one row per prompt, beside the prompts
    OTHER = "other"  # the span of the tokens a task does not label

    @property
    def n_positions(self) -> int:
        """The prompts' length, positions dropped by `trimmed` included."""
        return self.full_length if self.full_length is not None else int(self.clean.shape[1])

    @property
    def is_continuous(self) -> bool:
        return self.clean.is_floating_point()

    @property
    def size(self) -> int:
        return int(self.clean.shape[0])

    def _each(self, change: Any) -> "PromptBatch":
        """The batch with `change` applied to the prompts and every per-prompt field that is set."""
        fields = ("clean", "corrupted", *self.PER_PROMPT)
        return replace(self, **{name: change(getattr(self, name)) for name in fields
                                if getattr(self, name) is not None})

    def to(self, device: Union[str, torch.device]) -> "PromptBatch":
        return self._each(lambda t: t.to(device))

    def repeated(self, copies: int) -> "PromptBatch":
        """`copies` copies of this batch stacked along the batch axis (for stacked patched runs)."""
        return self._each(lambda t: t.repeat(copies, *([1] * (t.ndim - 1))))

    def rows(self, rows: Union[range, slice]) -> "PromptBatch":
        """Prompts `rows` (a range or slice of the batch axis) with everything that belongs to them."""
        return self._each(lambda t: t[rows.start:rows.stop])

    def trimmed(self, causal: bool, at_least: int = 16) -> "PromptBatch":
        """In a causal model nothing after the last read-out position can change the result: those positions
        dropped (`n_positions` still gives the whole length), keeping `at_least` positions where the prompts have
        them: torch's CPU softmax over fewer than 16 keys takes a scalar path, ~14x slower per element (torch 2.13;
        15 keys: 1.9 ms, 16 keys: 0.16 ms for the same rows), which outweighed the work saved. Unchanged for other
        models."""
        if not causal or not self.size:
            return self
        keep = min(self.clean.shape[1], max(int(self.position.max().item()) + 1, at_least))
        if keep == self.clean.shape[1]:
            return self
        return replace(self, clean=self.clean[:, :keep], corrupted=self.corrupted[:, :keep],
                       spans=None if self.spans is None else self.spans[:, :keep], full_length=self.n_positions)

    def swapped(self) -> "PromptBatch":
        """The same batch with clean and corrupted exchanged (answer, foil and position unchanged)."""
        return replace(self, clean=self.corrupted, corrupted=self.clean)

    def validate(self, model: Any) -> None:
        """Raise `InvalidBatchError` if this batch does not fit itself or `model`."""
        if self.clean.shape != self.corrupted.shape:
            raise InvalidBatchError(
                f"clean and corrupted must have the same shape; got clean {tuple(self.clean.shape)} "
                f"and corrupted {tuple(self.corrupted.shape)}")
        if self.clean.is_floating_point() != self.corrupted.is_floating_point():
            raise InvalidBatchError("clean and corrupted must both be token ids or both be float inputs; "
                                    f"got dtypes {self.clean.dtype} and {self.corrupted.dtype}")
        n, n_pos = self.clean.shape[0], self.clean.shape[1]
        for name in self.PER_PROMPT:
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise InvalidBatchError(f"{name} has {value.shape[0]} rows; expected one per prompt ({n})")
        self._validate_spans()
        if self.position.is_floating_point():
            raise InvalidBatchError(f"position must hold integer indices; got dtype {self.position.dtype}")
        if n and (self.position.min() < 0 or self.position.max() >= n_pos):
            raise InvalidBatchError(f"read-out positions must lie in [0, {n_pos}); got "
                                    f"{self.position.min().item()}..{self.position.max().item()}")
        cfg = model.cfg
        d_vocab_out = getattr(cfg, "d_vocab_out", -1)
        d_vocab_out = cfg.d_vocab if d_vocab_out in (None, -1) else d_vocab_out
        if self.clean_logprobs is not None and tuple(self.clean_logprobs.shape) != (n, d_vocab_out):
            raise InvalidBatchError(f"clean_logprobs has shape {tuple(self.clean_logprobs.shape)}; expected "
                                    f"[batch, d_vocab_out] = ({n}, {d_vocab_out})")
        if n_pos > cfg.n_ctx:
            raise InvalidBatchError(f"prompts have {n_pos} positions; the model's context is n_ctx={cfg.n_ctx}")
        if self.is_continuous:
            if self.clean.ndim != 3 or self.clean.shape[-1] != cfg.d_model:
                raise InvalidBatchError(f"float inputs must be [batch, pos, d_model={cfg.d_model}]; "
                                        f"got shape {tuple(self.clean.shape)}")
            return
        if self.clean.ndim != 2:
            raise InvalidBatchError(f"token inputs must be [batch, pos]; got shape {tuple(self.clean.shape)}")
        for name in ("clean", "corrupted"):
            tokens = getattr(self, name)
            if n and (tokens.min() < 0 or tokens.max() >= cfg.d_vocab):
                bad = tokens[(tokens < 0) | (tokens >= cfg.d_vocab)][0].item()
                raise InvalidBatchError(f"{name} holds token {bad}, outside the vocabulary [0, {cfg.d_vocab})")


    def _validate_spans(self) -> None:
        if (self.spans is None) != (self.span_names is None):
            raise InvalidBatchError(f"spans is {'None' if self.spans is None else 'set'} and span_names is "
                                    f"{self.span_names!r}; expected both (a span index per token and the spans' "
                                    "names) or neither")
        if self.spans is None:
            return
        names = self.span_names
        if not isinstance(names, tuple) or not names or not all(isinstance(n, str) and n for n in names) \
                or len(set(names)) != len(names) or any(n.isdigit() for n in names):
            raise InvalidBatchError(f"span_names={names!r}; expected a tuple of distinct non-empty names, none all "
                                    "digits (digits name token positions)")
        if tuple(self.spans.shape) != tuple(self.clean.shape[:2]):
            raise InvalidBatchError(f"spans has shape {tuple(self.spans.shape)}; expected one span index per token, "
                                    f"[batch, pos] = {tuple(self.clean.shape[:2])}")
        if self.spans.is_floating_point() or self.spans.dtype == torch.bool:
            raise InvalidBatchError(f"spans must hold integer span indices; got dtype {self.spans.dtype}")
        if self.spans.numel() and (self.spans.min() < 0 or self.spans.max() >= len(names)):
            raise InvalidBatchError(f"spans holds indices {self.spans.min().item()}..{self.spans.max().item()}; "
                                    f"expected indices into span_names {names} (0..{len(names) - 1})")


@runtime_checkable
class Task(Protocol):
    """What an engine needs from a task.

    `metric` gets the logits at each prompt's read-out position, ``[batch, d_vocab_out]``, and returns one
    number per prompt; higher means more of the behaviour.
    """

    name: str

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch: ...

    def metric(self, logits: Float[Tensor, "batch d_vocab_out"], batch: PromptBatch) -> Float[Tensor, " batch"]: ...

    def default_model(self) -> Any: ...


def check_task(task: Any) -> Any:
    """`task` if it has the members engines use (`Task`); `InvalidTaskError` saying what to pass otherwise (a task's
    name is not a task: ``tasks.get(name)`` is)."""
    if isinstance(task, str):
        raise InvalidTaskError(f"task {task!r} is a name; expected a task object, e.g. tasks.get({task!r}) "
                               "(tasks.names() lists the names)")
    missing = [member for member in ("name", "batch", "metric") if not hasattr(task, member)]
    if missing:
        raise InvalidTaskError(f"a {type(task).__name__} is not a task: it lacks {missing}; expected an object with "
                               "name, batch(model, n, seed) and metric(logits, batch) (circuits.Task)")
    return task


@dataclass(frozen=True)
class TrainingSettings:
    """A task's optimiser settings for the training loop (AdamW) and the loss of its plateau, if known."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: Optional[float] = 1.0
    plateau_loss: Optional[float] = None  # e.g. chance level; None: read off the unablated run's curve


@runtime_checkable
class TrainableTask(Task, Protocol):
    """What training a model on a task needs (clamped training, `circuits.clamped_runs`).

    - ``training_sample(generator) -> (inputs, targets)``: a training batch (token ids or float inputs);
    - ``training_loss(outputs, targets)``: the loss on full-sequence outputs;
    - ``held_out_sample(n, seed) -> (inputs, targets)``: `n` rows no training batch uses;
    - ``training_settings() -> TrainingSettings``;
    - ``resized(train_batch) -> TrainableTask``: the same task with training batches of that size.

    `TrainingDefaults` gives all but ``training_sample``.
    """

    def training_sample(self, generator: torch.Generator) -> tuple[Tensor, Tensor]: ...

    def training_loss(self, outputs: Tensor, targets: Tensor) -> Tensor: ...

    def held_out_sample(self, n: int, seed: int) -> tuple[Tensor, Tensor]: ...

    def training_settings(self) -> TrainingSettings: ...

    def resized(self, train_batch: int) -> "TrainableTask": ...


TRAINABLE_MEMBERS = ("training_sample", "training_loss", "held_out_sample", "training_settings", "resized")


def missing_training_members(task: Any) -> list[str]:
    """The members of `TrainableTask` that `task` lacks."""
    return [name for name in TRAINABLE_MEMBERS if not callable(getattr(task, name, None))]


def next_token_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of full-sequence outputs against integer targets; ``-100`` is ignored."""
    return F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), ignore_index=-100)


class TrainingDefaults:
    """Mixin for a task dataclass with ``training_sample``: the other members of `TrainableTask` (next-token
    loss, held-out rows from the sampler, settings from the task's attributes, resizing its ``train_batch``)."""

    def training_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return next_token_loss(outputs, targets)

    def held_out_sample(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """At least `n` rows from the training sampler seeded with `seed` (callers pick a seed no training run
        uses), cut to `n`."""
        generator = torch.Generator().manual_seed(seed)
        parts = [self.training_sample(generator)]
        while sum(p[0].shape[0] for p in parts) < n:
            parts.append(self.training_sample(generator))
        return torch.cat([p[0] for p in parts])[:n], torch.cat([p[1] for p in parts])[:n]

    def training_settings(self) -> TrainingSettings:
        """`TrainingSettings` from the task's own attributes of the same names (``lr``, ``weight_decay``,
        ``grad_clip``, ``plateau_loss``: a dataclass field or property), the defaults for the others."""
        names = [field.name for field in dataclasses.fields(TrainingSettings)]
        return TrainingSettings(**{name: getattr(self, name) for name in names if hasattr(self, name)})

    def resized(self, train_batch: int) -> Any:
        """The same task with training batches of `train_batch` rows (its ``train_batch`` field)."""
        return dataclasses.replace(self, train_batch=train_batch)
