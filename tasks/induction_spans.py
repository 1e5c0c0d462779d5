"""The induction task with its spans (positional circuits, docs/positional.md): the registered ``induction`` task.

Spans (`SPANS`): ``repeated`` (x_k in the first occurrence: the token the read-out repeats), ``next`` (x_{k+1}
there: what an induction head attends to and copies), ``end`` (the read-out, x_k in the repeat) and ``other``. They
are read off each prompt (the first occurrence is where clean and corrupted differ; x_k is the one token there equal
to the read-out's), in a module of its own: `tasks.induction`'s code is the recipe hash of the shipped default model
(`circuits.models.TrainedToy`), which this leaves unchanged (training runs `tasks.induction.Induction.train`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from circuits import PromptBatch
from tasks import induction

SPANS = ("repeated", "next", "end", PromptBatch.OTHER)


@dataclass(frozen=True)
class Induction(induction.Induction):
    """`tasks.induction.Induction` whose batches carry `SPANS`."""

    def sample_batch(self, n: int, seed: int) -> PromptBatch:
        return with_spans(super().sample_batch(n, seed))


def with_spans(batch: PromptBatch) -> PromptBatch:
    """`batch` with `SPANS`: the first occurrence is where clean and corrupted differ (its tokens are resampled), and
    segment tokens are distinct and never filler, so x_k is the one token there equal to the read-out token."""
    rows = torch.arange(batch.size)
    first = batch.clean != batch.corrupted
    repeated = (first & (batch.clean == batch.clean[rows, batch.position][:, None])).int().argmax(1)
    spans = torch.full_like(batch.clean, SPANS.index(PromptBatch.OTHER))
    for name, where in (("repeated", repeated), ("next", repeated + 1), ("end", batch.position)):
        spans[rows, where] = SPANS.index(name)
    return replace(batch, spans=spans, span_names=SPANS)
