"""Factual recall (Lv et al. 2024): "The capital of France is" -> " Paris".

Clean: a relation's template with a subject the model knows; corrupted: the same template with another
known subject whose prompt has as many tokens and whose answer differs. Metric: logit(the clean subject's
answer) - logit(the corrupted subject's answer). Facts, templates and the top-1 filter are in `tasks.facts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional
from weakref import WeakKeyDictionary

from jaxtyping import Float
from torch import Tensor

from circuits import PromptBatch, metrics, models
from circuits.errors import InvalidOptionError
from tasks import facts


# Spans of a prompt (docs/positional.md): the subject's tokens (and every token where clean and corrupted differ),
# the read-out token, and the rest.
SPANS = ("subject", "end", PromptBatch.OTHER)


@dataclass(frozen=True)
class FactualRecall:
    name: str = "factual_recall"
    relation: str = "capital"  # a relation of tasks/data/facts.json: capital, language, landmark
    templates: Optional[tuple[str, ...]] = None  # None: the relation's templates (tasks.facts.TEMPLATES)
    subjects: Optional[tuple[str, ...]] = None  # restrict the clean and corrupted subjects to these
    min_facts: int = 8  # fewer known facts under every template: TooFewFactsError
    _known: WeakKeyDictionary = field(default_factory=WeakKeyDictionary, compare=False, repr=False)

    def __post_init__(self) -> None:
        rel = facts.relation(self.relation)  # UnknownNameError naming the relation
        for template in self.templates or ():
            facts.check_template(template)
        if self.min_facts < 2:
            raise InvalidOptionError(f"min_facts={self.min_facts}; a pair needs at least 2 facts")
        facts.check_subjects(rel, self.subjects, self.min_facts)

    @property
    def template_list(self) -> tuple[str, ...]:
        return self.templates or facts.relation(self.relation).templates

    def known(self, model: Any) -> list[facts.Known]:
        """The facts the model gets right at top-1, per template (filtered once per model)."""
        facts.check_model(model, self.name)
        return facts.known_per_template(self._known, model, self.relation, self.template_list, self.subjects,
                                        self.min_facts)

    def pairs(self, model: Any, n: int, seed: int) -> list[facts.Pair]:
        return facts.pair_prompts(model, self.known(model), n, seed)

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        """The prompt pairs, with spans (`SPANS`) for positional circuits."""
        pairs = self.pairs(model, n, seed)
        batch = facts.prompt_batch(model, [p.clean for p in pairs], [p.corrupted for p in pairs],
                                   answer=[p.answer for p in pairs], foil=[p.foil for p in pairs])
        marked = [{"subject": sorted(set(facts.occurrences(model, p.clean, p.subject))
                                     | set(facts.differing(p.clean, p.corrupted)))} for p in pairs]
        return facts.with_spans(batch, SPANS, marked)

    def metric(self, logits: Float[Tensor, "batch d_vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        return metrics.logit_difference(logits, batch.answer, batch.foil)

    def default_model(self) -> Any:
        return models.bundled()
