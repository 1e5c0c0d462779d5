"""Facts shipped with the package, prompt building, and the filter that keeps what a model knows.

The facts (country -> capital, country -> language, landmark -> city) live in ``tasks/data/facts.json``;
each relation has several completion-style templates with a ``{subject}`` placeholder (a question
ending in "A:" does not work on the bundled model; completions do). Prompts get the tokenizer's BOS
prepended. Answers are read with a leading space and must be a single token.

`known_facts` keeps the facts a model gets right at top-1 under a template (single-token answers only)
and says how many survive each step. `pair_prompts` pairs subjects whose prompts tokenise to the same
length, so a clean prompt and its corrupted twin differ only in the subject's tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from collections.abc import Sequence
from typing import Any, Optional
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Int
from torch import Tensor

from circuits import PromptBatch, forward, tokens
from circuits.errors import IncompatibleModelError, InvalidOptionError, MultiTokenAnswerError, UnknownNameError
from circuits.tokens import padded  # noqa: F401 (tasks.facts.padded: the one padding, in the library)

PLACEHOLDER = "{subject}"

TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": ("The capital of {subject} is",
                "The capital city of {subject} is",
                "The capital of {subject} is the city of",
                "The government of {subject} sits in the city of"),
    "language": ("The official language of {subject} is",
                 "The main language spoken in {subject} is",
                 "The national language of {subject} is",
                 "People who live in {subject} speak"),
    "landmark": ("Tourists can visit {subject} in the city of",
                 "You can see {subject} in the city of",
                 "Visitors flock to {subject} in the city of",
                 "Travellers go to see {subject} in the city of"),
}


class TooFewFactsError(InvalidOptionError):
    """A relation the model gets right for too few facts (or too few length-matched pairs) to form a batch."""


@dataclass(frozen=True)
class Relation:
    """One relation: subject -> answer facts and the templates that ask for the answer."""

    name: str
    subject_kind: str
    facts: dict[str, str]
    templates: tuple[str, ...]

    def answer(self, subject: str) -> str:
        if subject not in self.facts:
            raise UnknownNameError(f"{self.subject_kind} (relation {self.name!r})", subject, sorted(self.facts))
        return self.facts[subject]


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    # Read-only package data, parsed once (immutable content, not a cache of model results).
    return json.loads(resources.files("tasks").joinpath("data/facts.json").read_text(encoding="utf-8"))


def relation_names() -> list[str]:
    return sorted(_data())


def relation(name: str) -> Relation:
    """The relation `name` (``capital``, ``language``, ``landmark``) with its facts and templates."""
    data = _data()
    if name not in data:
        raise UnknownNameError("relation", name, relation_names())
    entry = data[name]
    return Relation(name, entry["subject"], dict(entry["facts"]), TEMPLATES[name])


def check_template(template: str, *placeholders: str) -> str:
    """`template` if it holds every placeholder (default ``{subject}``); `InvalidOptionError` naming it otherwise."""
    needed = placeholders or (PLACEHOLDER,)
    missing = [p for p in needed if p not in template]
    if missing:
        raise InvalidOptionError(f"template {template!r} lacks the placeholder(s) {missing}; "
                                 f"expected e.g. 'The capital of {PLACEHOLDER} is'")
    return template


# --- tokens ----------------------------------------------------------------------------------------------
def encode(model: Any, text: str, bos: bool = True) -> list[int]:
    """Token ids of `text`, with the tokenizer's BOS first when `bos`."""
    tokenizer = model.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []) + list(ids)


def occurrences(model: Any, tokens: Sequence[int], text: str) -> list[int]:
    """The positions of every occurrence of `text`'s tokens in `tokens` (as a word after a space, or at the start)."""
    out: list[int] = []
    for piece in {tuple(encode(model, " " + text, bos=False)), tuple(encode(model, text, bos=False))}:
        for start in range(len(tokens) - len(piece) + 1):
            if tuple(tokens[start:start + len(piece)]) == piece:
                out += range(start, start + len(piece))
    return sorted(set(out))


def differing(clean: Sequence[int], corrupted: Sequence[int]) -> list[int]:
    """The positions where a clean prompt and its corrupted twin have different tokens."""
    return [p for p, (a, b) in enumerate(zip(clean, corrupted)) if a != b]


def with_spans(batch: PromptBatch, names: tuple[str, ...], marked: Sequence[dict[str, list[int]]]) -> PromptBatch:
    """`batch` with spans `names` (``"end"`` and ``PromptBatch.OTHER`` among them): per row, ``{name: token
    positions}`` marked in order, then the read-out token as ``"end"``; padding and the rest in ``"other"``."""
    spans = torch.full_like(batch.clean, names.index(PromptBatch.OTHER))
    for row, marks in enumerate(marked):
        for name, positions in marks.items():
            spans[row, positions] = names.index(name)
        spans[row, int(batch.position[row])] = names.index("end")
    return replace(batch, spans=spans, span_names=names)


def answer_token(model: Any, answer: str) -> int:
    """The single token of ``" " + answer``; `MultiTokenAnswerError` naming the answer and its pieces otherwise."""
    ids = encode(model, " " + answer, bos=False)
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise MultiTokenAnswerError(f"answer {answer!r} is {len(ids)} tokens {pieces}; expected a single token")
    return ids[0]


def is_single_token(model: Any, answer: str) -> bool:
    return len(encode(model, " " + answer, bos=False)) == 1


def prompt_batch(model: Any, clean: Sequence[Sequence[int]], corrupted: Sequence[Sequence[int]],
                 answer: Sequence[int], foil: Sequence[int]) -> PromptBatch:
    """A batch of equal-length clean/corrupted token prompts, right-padded, read out at each prompt's end
    (`circuits.tokens.paired`: a pair of unequal lengths is refused, naming the row)."""
    return tokens.paired(clean, corrupted, answer, foil, pad=pad_token(model))


def pad_token(model: Any) -> int:
    return tokens.pad_id(model)


@torch.no_grad()
def top_tokens(model: Any, prompts: Sequence[Sequence[int]], batch_size: int = 64) -> Int[Tensor, " batch"]:
    """The model's top-1 next token after each prompt (batched, read-out position only)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        tokens, position = padded(prompts[start:start + batch_size], pad_token(model))
        out.append(forward.logits(model, tokens, position).argmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


# --- the filter ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Known:
    """The facts of `relation` a model gets right at top-1 under `template`, and how many survived each step."""

    relation: str
    template: str
    subjects: tuple[str, ...]  # right at top-1 (single-token answer)
    total: int  # facts asked about (every fact of the relation unless restricted to some subjects)
    single_token: int  # of those, with a single-token answer

    @property
    def report(self) -> str:
        return (f"{self.relation} / {self.template!r}: {len(self.subjects)} of {self.single_token} single-token "
                f"facts right at top-1 ({self.total} facts asked)")


def known_facts(model: Any, relation_name: str, template: Optional[str] = None,
                subjects: Optional[Sequence[str]] = None, batch_size: int = 64) -> Known:
    """Facts of `relation_name` (only `subjects`, when given) with a single-token answer that `model`
    predicts at top-1 after `template` (default: the relation's first template) with BOS prepended."""
    rel = relation(relation_name)
    template = check_template(template or rel.templates[0])
    check_subjects(rel, subjects)
    asked = list(rel.facts) if subjects is None else list(dict.fromkeys(subjects))
    candidates = [s for s in asked if is_single_token(model, rel.facts[s])]
    prompts = [encode(model, template.format(subject=s)) for s in candidates]
    top = top_tokens(model, prompts, batch_size).tolist()
    right = tuple(s for s, t in zip(candidates, top) if t == answer_token(model, rel.facts[s]))
    return Known(rel.name, template, right, total=len(asked), single_token=len(candidates))


# --- clean / corrupted pairs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """A clean prompt and its corrupted twin of the same length (token ids), with both subjects' answers."""

    clean: tuple[int, ...]
    corrupted: tuple[int, ...]
    answer: int  # the clean subject's answer token
    foil: int  # the corrupted subject's answer token
    subject: str
    other: str
    template: str


def pair_prompts(model: Any, known: Sequence[Known], n: int, seed: int) -> list[Pair]:
    """`n` clean/corrupted pairs: a template (one `Known` per template), a subject, and another subject of the
    same template whose prompt has as many tokens and whose answer differs. `TooFewFactsError` when no
    template allows one."""
    rng = random.Random(seed)
    pools = []
    for k in known:
        rel = relation(k.relation)
        by_length: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
        for s in k.subjects:
            ids = tuple(encode(model, k.template.format(subject=s)))
            by_length.setdefault(len(ids), []).append((s, ids))
        groups = [g for g in by_length.values() if len({rel.facts[s] for s, _ in g}) >= 2]
        if groups:
            pools.append((k, rel, groups))
    if not pools:
        counts = ", ".join(f"{k.template!r}: {len(k.subjects)}" for k in known)
        raise TooFewFactsError(f"relation {known[0].relation if known else '?'!r}: no two known facts with "
                               f"different answers tokenise to the same length (known facts per template: "
                               f"{counts}); expected at least one such pair")
    pairs = []
    for _ in range(n):
        k, rel, groups = rng.choice(pools)
        group = rng.choice(groups)
        (s, ids) = rng.choice(group)
        # never empty: the group holds at least two different answers
        others = [(o, oids) for o, oids in group if rel.facts[o] != rel.facts[s]]
        o, oids = rng.choice(others)
        pairs.append(Pair(ids, oids, answer_token(model, rel.facts[s]), answer_token(model, rel.facts[o]),
                          s, o, k.template))
    return pairs


# --- what the tasks share ----------------------------------------------------------------------------------
def check_model(model: Any, task: str) -> None:
    if getattr(model, "tokenizer", None) is None:
        raise IncompatibleModelError(f"{task} builds prompts from text and needs a model with a tokenizer "
                                     f"(e.g. circuits.models.bundled()); got {type(model).__name__} without one")


def check_subjects(rel: Relation, subjects: Optional[Sequence[str]], min_facts: int = 0) -> None:
    """Every subject in the data (`UnknownNameError` naming it) and at least `min_facts` of them
    (`TooFewFactsError`, before any model work)."""
    for s in subjects or ():
        rel.answer(s)
    if subjects is not None and len(set(subjects)) < min_facts:
        raise TooFewFactsError(f"subjects={tuple(subjects)!r} give {len(set(subjects))} facts of relation "
                               f"{rel.name!r}; expected at least min_facts={min_facts}")


def known_per_template(cache: "WeakKeyDictionary[Any, dict]", model: Any, relation_name: str,
                       templates: Sequence[str], subjects: Optional[Sequence[str]] = None,
                       min_facts: int = 2) -> list[Known]:
    """`known_facts` for each template (kept in `cache`, one entry per model: the filter costs forward
    passes), restricted to `subjects` when given; `TooFewFactsError` when fewer than `min_facts` survive."""
    per_model = cache.setdefault(model, {})
    key = None if subjects is None else tuple(subjects)
    out = []
    for template in templates:
        if (relation_name, template, key) not in per_model:
            per_model[(relation_name, template, key)] = known_facts(model, relation_name, template, subjects)
        out.append(per_model[(relation_name, template, key)])
    best = max(len(k.subjects) for k in out)
    if best < min_facts:
        raise TooFewFactsError(f"relation {relation_name!r}: the model gets at most {best} facts right at top-1 "
                               f"under any template ({'; '.join(k.report for k in out)}); expected at least "
                               f"min_facts={min_facts}")
    return out
