"""Capitals counterfactuals (Yu, Merullo & Pavlick 2023; Jin et al. 2024, PH3): context against memory.

Clean: a context that names another city as the country's capital, then the question, e.g.
"Context: The capital of France is Berlin.\\nQ: What is the capital of France?\\nA: The capital of France is";
corrupted: the same prompt with a consistent context (the true capital, " Paris"). Metric: logit(in-context
city) - logit(memorised capital): higher means the model follows the context. Countries are those the model
gets right at top-1 after "The capital of {subject} is" (`tasks.facts.known_facts`); the in-context city is
another known country's capital, so both answers are single tokens and both prompts have the same length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional
from weakref import WeakKeyDictionary

from jaxtyping import Float
from torch import Tensor

from circuits import PromptBatch, metrics, models
from circuits.errors import InvalidOptionError
from tasks import facts

CONTEXT_TEMPLATES = (
    "Context: The capital of {subject} is {other}.\nQ: What is the capital of {subject}?\nA: The capital of {subject} is",
    "Context: {other} is the capital of {subject}.\nQ: What is the capital of {subject}?\nA: The capital of {subject} is",
)


# Spans of a prompt (docs/positional.md): every mention of the country, the in-context city (the one token where clean
# and corrupted differ), the read-out token, and the rest.
SPANS = ("country", "city", "end", PromptBatch.OTHER)


@dataclass(frozen=True)
class Counterfactual:
    """One prompt pair: `clean` names `other_city` in the context, `corrupted` names the true `capital`."""

    clean: tuple[int, ...]
    corrupted: tuple[int, ...]
    in_context: int  # token of the city the clean context names
    memorised: int  # token of the true capital
    country: str
    other_city: str
    template: str


@dataclass(frozen=True)
class Capitals:
    name: str = "capitals"
    templates: tuple[str, ...] = CONTEXT_TEMPLATES  # each with {subject} and {other}
    recall_template: str = facts.TEMPLATES["capital"][0]  # the filter: countries known at top-1 after this
    subjects: Optional[tuple[str, ...]] = None  # the countries asked about (None: every known one)
    min_facts: int = 8
    _known: WeakKeyDictionary = field(default_factory=WeakKeyDictionary, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.templates:
            raise InvalidOptionError("templates=(); expected at least one context template")
        for template in self.templates:
            facts.check_template(template, facts.PLACEHOLDER, "{other}")
        facts.check_template(self.recall_template)
        facts.check_subjects(facts.relation("capital"), self.subjects)
        if self.min_facts < 2:
            raise InvalidOptionError(f"min_facts={self.min_facts}; a counterfactual needs at least 2 known countries")

    def known(self, model: Any) -> facts.Known:
        """Every country the model knows (the in-context cities come from all of them)."""
        facts.check_model(model, self.name)
        return facts.known_per_template(self._known, model, "capital", [self.recall_template],
                                        min_facts=self.min_facts)[0]

    def counterfactuals(self, model: Any, n: int, seed: int) -> list[Counterfactual]:
        known = self.known(model)
        capital = facts.relation("capital").facts
        asked = [c for c in known.subjects if self.subjects is None or c in self.subjects]
        if not asked:
            raise facts.TooFewFactsError(f"none of subjects={self.subjects!r} is a country the model knows "
                                         f"({known.report}); expected at least one")
        rng = random.Random(seed)
        out: list[Counterfactual] = []
        for _ in range(n):
            template, country = rng.choice(self.templates), rng.choice(asked)
            other = rng.choice([c for c in known.subjects if capital[c] != capital[country]])
            clean = facts.encode(model, template.format(subject=country, other=capital[other]))
            corrupted = facts.encode(model, template.format(subject=country, other=capital[country]))
            if len(clean) != len(corrupted):  # both cities are single tokens; a merge with "." would show here
                raise InvalidOptionError(f"template {template!r} tokenises differently for {capital[other]!r} and "
                                         f"{capital[country]!r}; expected one token per city")
            out.append(Counterfactual(tuple(clean), tuple(corrupted), facts.answer_token(model, capital[other]),
                                      facts.answer_token(model, capital[country]), country, capital[other], template))
        return out

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        """The counterfactual pairs, with spans (`SPANS`) for positional circuits."""
        pairs = self.counterfactuals(model, n, seed)
        batch = facts.prompt_batch(model, [p.clean for p in pairs], [p.corrupted for p in pairs],
                                   answer=[p.in_context for p in pairs], foil=[p.memorised for p in pairs])
        marked = [{"country": facts.occurrences(model, p.clean, p.country),
                   "city": facts.differing(p.clean, p.corrupted)} for p in pairs]
        return facts.with_spans(batch, SPANS, marked)

    def metric(self, logits: Float[Tensor, "batch d_vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        """logit(in-context city) - logit(memorised capital)."""
        return metrics.logit_difference(logits, batch.answer, batch.foil)

    def default_model(self) -> Any:
        return models.bundled()
