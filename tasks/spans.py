"""Few-shot, ICL regression and regular languages with spans (positional circuits, docs/positional.md): the
registered ``few_shot``, ``icl_regression`` and ``regular_languages`` tasks.

Each class here is its task with the spans read off every batch, in a module of its own: each task's module is its
shipped model's recipe hash (`circuits.models.TrainedToy` hashes the module that defines ``train``, which these
subclasses inherit unchanged), so marking spans there would retrain the shipped models. The induction task's spans
live in `tasks.induction_spans` for the same reason.

- few-shot (``e1 l1 e2 l2 q``): ``answer_exemplar`` and ``answer_label`` (the context pair of the query's class: the
  exemplar a layer-1 head matches the query to, and the label it copies), ``foil_exemplar``, ``foil_label``, ``query``;
- ICL regression: ``context`` (the L tokens ``[x; y]``) and ``query``;
- regular languages: ``context`` (where clean and corrupted sequences differ: the in-context statistics), ``ngram``
  (the tokens before the read-out that both share, ``kept - 1`` of them), ``end`` (the read-out) and ``other`` (after
  it; trimmed away by the engines).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from circuits import PromptBatch
from tasks import few_shot, icl_regression, regular_languages

FEW_SHOT_SPANS = ("answer_exemplar", "answer_label", "foil_exemplar", "foil_label", "query")
ICL_REGRESSION_SPANS = ("context", "query")


@dataclass(frozen=True)
class FewShot(few_shot.FewShot):
    """`tasks.few_shot.FewShot` whose batches carry `FEW_SHOT_SPANS`."""

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        return self.with_spans(super().batch(model, n, seed))

    def with_spans(self, batch: PromptBatch) -> PromptBatch:
        """`batch` with `FEW_SHOT_SPANS`. The answer's label is the one of l1, l2 (distinct labels) whose input,
        less its positional vector, is the answer's label vector; its exemplar is the token before it."""
        _, label_vectors, positions = self.world()
        answer = label_vectors[batch.answer]
        distance = torch.stack([(batch.clean[:, p] - positions[p] - answer).norm(dim=-1) for p in (1, 3)], dim=1)
        answer_label = 1 + 2 * distance.argmin(1)  # position 1 or 3
        foil_label = 4 - answer_label
        spans = torch.empty(batch.size, few_shot.N_POS, dtype=torch.long)  # every position gets one span below
        rows = torch.arange(batch.size)
        for name, where in (("answer_exemplar", answer_label - 1), ("answer_label", answer_label),
                            ("foil_exemplar", foil_label - 1), ("foil_label", foil_label),
                            ("query", batch.position)):
            spans[rows, where] = FEW_SHOT_SPANS.index(name)
        return replace(batch, spans=spans, span_names=FEW_SHOT_SPANS)


@dataclass(frozen=True)
class ICLRegression(icl_regression.ICLRegression):
    """`tasks.icl_regression.ICLRegression` whose batches carry `ICL_REGRESSION_SPANS`."""

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        batch = super().batch(model, n, seed)
        spans = torch.zeros(batch.clean.shape[:2], dtype=torch.long)
        spans[torch.arange(batch.size), batch.position] = ICL_REGRESSION_SPANS.index("query")
        return replace(batch, spans=spans, span_names=ICL_REGRESSION_SPANS)


@dataclass(frozen=True)
class RegularLanguages(regular_languages.RegularLanguages):
    """`tasks.regular_languages.RegularLanguages` whose batches carry ``context``, ``ngram`` (when ``kept > 1``),
    ``end`` and ``other``."""

    def sample_batch(self, n: int, seed: int) -> PromptBatch:
        batch = super().sample_batch(n, seed)
        names = ("context", "ngram", "end", PromptBatch.OTHER) if self.kept > 1 else ("context", "end",
                                                                                      PromptBatch.OTHER)
        index = torch.arange(batch.clean.shape[1])[None]
        end = batch.position[:, None]
        spans = torch.full_like(batch.clean, names.index(PromptBatch.OTHER))
        spans[index < end] = names.index("context")
        if self.kept > 1:
            spans[(index < end) & (index > end - self.kept)] = names.index("ngram")
        spans[index == end] = names.index("end")
        return replace(batch, spans=spans, span_names=names)
