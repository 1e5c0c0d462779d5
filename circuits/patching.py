"""Pieces every patching engine shares: caching activations, metric means, the normalised score."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from circuits import forward, hooks
from circuits.errors import InvalidOptionError, MetricError, UndefinedScoreError
from circuits.task import PromptBatch

Direction = Literal["denoising", "noising"]
DIRECTIONS = ("denoising", "noising")


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InvalidOptionError(f"direction={direction!r}; expected one of {DIRECTIONS}")


def trimmed(batch: PromptBatch, causal: bool) -> PromptBatch:
    """In a causal model nothing after the last read-out position can change the result: drop it."""
    keep = forward.needed_length(batch.position, causal, batch.clean.shape[1])
    return replace(batch, clean=batch.clean[:, :keep], corrupted=batch.corrupted[:, :keep])


def metric_mean(task: Any, logits: Tensor, batch: PromptBatch) -> Tensor:
    """The batch mean of the task's metric, checked for shape and NaN."""
    values = task.metric(logits, batch)
    if values.shape != (batch.size,):
        raise MetricError(f"{task.name}.metric returned shape {tuple(values.shape)}; expected ({batch.size},)")
    mean = values.float().mean()
    if not torch.isfinite(mean):
        raise MetricError(f"{task.name}.metric returned a non-finite value ({mean.item()}) on this batch")
    return mean


def copies_metric(task: Any, logits: Tensor, batch: PromptBatch, copies: int) -> Tensor:
    """Metric means of `copies` stacked copies of `batch`: logits ``[copies * batch, vocab]`` -> ``[copies]``."""
    per_copy = logits.reshape(copies, batch.size, *logits.shape[1:])
    return torch.stack([metric_mean(task, per_copy[i], batch) for i in range(copies)])


@dataclass(frozen=True)
class Baseline:
    """Metric means on the clean and corrupted prompts; the denominator of every normalised score."""

    clean: float
    corrupted: float

    def __post_init__(self) -> None:
        if abs(self.clean - self.corrupted) < 1e-8 * max(1.0, abs(self.clean)):
            raise UndefinedScoreError(
                f"the metric is {self.clean:.6g} on clean and {self.corrupted:.6g} on corrupted prompts; "
                "with no gap the normalised score (m_patched - m_corrupted) / (m_clean - m_corrupted) is undefined")

    def score(self, patched: Tensor, direction: Direction) -> Tensor:
        """Denoising: (m_patched - m_corrupted) / gap; noising: (m_clean - m_patched) / gap.
        Both are 1 when the patch carries the whole behaviour and 0 when it carries none."""
        gap = self.clean - self.corrupted
        if direction == "denoising":
            return (patched - self.corrupted) / gap
        return (self.clean - patched) / gap


def run_with_cache(model: Any, inputs: Tensor, names: list[str], position: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Read-out logits and the activations at `names` (detached)."""
    cache: dict[str, Tensor] = {}
    # hook.name is the canonical name, which can differ from an alias we asked for: key by request.
    fwd = [(name, (lambda tensor, hook, name=name: cache.__setitem__(name, tensor.detach()))) for name in names]
    with hooks.attached(model, fwd):
        out = forward.logits(model, inputs, position)
    return out, cache


def chunks(total: int, size: int) -> list[range]:
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def copies_per_pass(model: Any, batch: PromptBatch, memory_mb: float) -> int:
    """How many stacked copies of the batch fit the memory budget (a rough per-copy activation size)."""
    cfg = model.cfg
    n_pos = batch.clean.shape[1]
    d_mlp = 0 if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
    floats = batch.size * n_pos * (6 * cfg.d_model + 3 * cfg.n_heads * n_pos + 2 * d_mlp)
    return max(1, int(memory_mb * 2**20 // (4 * floats)))
