"""Indirect-object identification prompts (Wang et al. 2022), for a worked example on the bundled SmolLM2.

    records = ioi.generate(model, n=400, seed=0)   # clean/corrupted pairs with token spans under `meta`
    kept, report = ioi.kept(model, records)        # the prompts the model gets right (logit IO > logit S)
    task = tasks.prompts(ioi.DATA)                 # the shipped set (analyses/ioi_data.py made it)

A clean prompt names two people, then repeats one of them (the subject S) as the giver: "When Mary and John went
to the store, John gave a drink to" -> " Mary" (the indirect object IO); the foil is " John". Both orders of the
first two names appear (ABBA: IO first; BABA: S first). The corrupted prompt is the literature's ABC corruption:
the three name slots filled by three other names, all different ("When Anna and Paul went to the store, Lucy
gave a drink to"), so it carries no information about which name is the answer; as every name is one token (with
its leading space) under the model's tokenizer, it has the clean prompt's token length.

Each record keeps, under ``meta`` (ignored by the prompt-pairs loader), the template, the order, the names, the
place and object (where the template has them), and the token positions in the clean prompt as the model reads it
(with its BOS convention; position 0 is BOS for SmolLM2): ``IO``, ``S1``, ``S2``, ``S1+1`` (the token after S1,
which induction heads attend to from S2) and ``end`` (the read-out position). The corrupted prompt has its names
at the same positions. The same positions are the record's ``spans`` (`tasks.prompt_files`), so the task's batches
carry spans IO, S1, S1+1, S2, end and other (every other token) for positional circuits (docs/positional.md).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from circuits import forward, tokens
from circuits.errors import InvalidOptionError
from tasks import prompt_files, prompt_pairs

DATA = Path(__file__).parent / "data" / "ioi_smollm2.jsonl"  # the shipped set for the bundled SmolLM2
RECIPE = Path(__file__).parent / "data" / "ioi_smollm2_recipe.json"  # how it was made: counts, names, model

# {A} and {B}: the first two names (ABBA: A = IO, B = S; BABA: A = S, B = IO); {S}: the subject again.
TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "Then, {A} and {B} went to the {place}. {S} gave a {object} to",
    "After {A} and {B} went to the {place}, {S} gave a {object} to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "Then, {A} and {B} had a lot of fun at the {place}. {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give it to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "While {A} and {B} were commuting to the {place}, {S} gave a {object} to",
    "Afterwards, {A} and {B} went to the {place}. {S} gave a {object} to",
)
PLACES = ("store", "park", "school", "hospital", "office", "restaurant", "station", "garden", "beach", "library",
          "market", "house")
OBJECTS = ("drink", "ball", "book", "key", "gift", "letter", "snack", "ring", "bag", "phone", "cake", "pen")
# Common English first names; only those that are one token (with a leading space) for the model are used.
NAMES = (
    "Mary", "John", "Tom", "James", "Sarah", "Emma", "Paul", "Peter", "Laura", "David", "Michael", "Anna", "Lucy",
    "Kate", "Mark", "Daniel", "Chris", "Alex", "Sam", "Ben", "Jack", "Lisa", "Linda", "Susan", "Karen", "Nancy",
    "Robert", "William", "Richard", "Joseph", "Thomas", "Charles", "George", "Edward", "Henry", "Frank", "Jane",
    "Alice", "Helen", "Ruth", "Amy", "Rachel", "Rose", "Grace", "Emily", "Hannah", "Jessica", "Jennifer", "Elizabeth",
    "Andrew", "Steven", "Kevin", "Brian", "Eric", "Jason", "Adam", "Ryan", "Matt", "Nick", "Tony", "Joe", "Bob",
    "Jim", "Bill", "Dan", "Max", "Leo", "Jacob", "Ethan", "Noah", "Oliver", "Harry", "Jerry", "Martin", "Simon",
    "Victoria", "Julia", "Anne", "Claire", "Sophie", "Diana", "Maria", "Sara", "Eva", "Nina", "Ellen", "Amanda",
    "Patrick", "Scott", "Greg", "Carl", "Louis", "Arthur", "Walter", "Albert", "Fred", "Roger", "Jeff", "Tim",
)
ROLES = ("IO", "S1", "S2", "S1+1", "end")


def one_token_names(model: Any, names: Sequence[str] = NAMES) -> list[str]:
    """The names that are one token with a leading space under the model's tokenizer (as they follow a word)."""
    return [name for name in names if len(tokens.encode(model, " " + name, bos=False)) == 1]


def generate(model: Any, n: int, seed: int = 0, names: Sequence[str] = NAMES) -> list[dict[str, Any]]:
    """`n` IOI records (module docstring), half ABBA and half BABA, templates in turn, names drawn from `seed`, no
    clean prompt twice; each with its token positions under ``meta`` (checked: the token at each name position is
    that name)."""
    if n < 1:
        raise InvalidOptionError(f"n={n!r}; expected at least one prompt")
    usable = one_token_names(model, names)
    if len(usable) < 5:
        raise InvalidOptionError(f"only {len(usable)} of {len(names)} names are one token for this model ({usable}); "
                                 "expected at least 5 (two for the clean prompt, three others for the corruption)")
    rng = random.Random(seed)
    records, seen = [], set()
    for i in range(n):
        template = i % len(TEMPLATES)
        order = "ABBA" if (i // len(TEMPLATES)) % 2 == 0 else "BABA"
        clean = None
        while clean is None or clean in seen:  # every clean prompt once (a repeat is drawn again)
            io, s, a, b, c = rng.sample(usable, 5)
            fill = {"place": rng.choice(PLACES), "object": rng.choice(OBJECTS)}
            first, second = (io, s) if order == "ABBA" else (s, io)
            clean = TEMPLATES[template].format(A=first, B=second, S=s, **fill)
        seen.add(clean)
        corrupted = TEMPLATES[template].format(A=a, B=b, S=c, **fill)
        used = {key: value for key, value in fill.items() if "{" + key + "}" in TEMPLATES[template]}
        meta = {"template": template, "order": order, "IO": io, "S": s, "corrupted_names": [a, b, c], **used,
                "positions": positions(model, TEMPLATES[template], order, first, second, s, fill)}
        records.append({"clean": clean, "corrupted": corrupted, "answer": " " + io, "foil": " " + s,
                        "spans": dict(meta["positions"]), "meta": meta})
    return records


def positions(model: Any, template: str, order: str, first: str, second: str, s: str,
              fill: dict[str, str]) -> dict[str, int]:
    """Token positions of IO, S1, S2, S1+1 and end in the filled template as the model reads it (with BOS)."""
    marked = template.format(A="\0A", B="\0B", S="\0S", **fill)
    names = {"\0A": first, "\0B": second, "\0S": s}
    found: dict[str, int] = {}
    for slot, name in names.items():
        cut = marked.index(slot)
        prefix = marked[:cut]
        for other, value in names.items():
            prefix = prefix.replace(other, value)
        ids = tokens.encode(model, prefix.rstrip(" ") + " " + name)
        if tokens.pieces(model, ids[-1:]) != [" " + name]:  # byte-level BPE keeps " name" one token after a word
            raise InvalidOptionError(f"{name!r} in {template!r} is not one token at its place "
                                     f"({tokens.pieces(model, ids[-2:])}); expected names that start a token")
        found[slot] = len(ids) - 1
    a, b, s2 = found["\0A"], found["\0B"], found["\0S"]
    io, s1 = (a, b) if order == "ABBA" else (b, a)
    full = template.format(A=first, B=second, S=s, **fill)
    return {"IO": io, "S1": s1, "S2": s2, "S1+1": s1 + 1, "end": len(tokens.encode(model, full)) - 1}


@torch.no_grad()
def logit_differences(model: Any, records: Sequence[dict[str, Any]], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """logit(answer) - logit(foil) at the read-out of each record's clean and corrupted prompt, in record order, and
    whether the answer is the clean prompt's top-1 token (``top1``)."""
    pairs = prompt_files.from_records(records)
    rows = prompt_pairs.tokenize(model, tuple(pairs), first_token=False)
    out: dict[str, list[torch.Tensor]] = {"clean": [], "corrupted": [], "top1": []}
    for start in range(0, len(pairs), batch_size):
        part = slice(start, start + batch_size)
        batch = tokens.paired(rows.clean[part], rows.corrupted[part], rows.answer[part], rows.foil[part],
                              pad=tokens.pad_id(model))
        for kind in ("clean", "corrupted"):
            logits = forward.logits(model, getattr(batch, kind), batch.position).float().cpu()
            picked = logits.gather(1, torch.stack([batch.answer, batch.foil], 1))
            out[kind].append(picked[:, 0] - picked[:, 1])
            if kind == "clean":
                out["top1"].append(logits.argmax(-1) == batch.answer)
    return {kind: torch.cat(values) for kind, values in out.items()}


def kept(model: Any, records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records whose clean prompt the model gets right (logit IO > logit S at the end) and a report of what
    was generated and kept (counts per template and order, logit differences)."""
    diff = logit_differences(model, records)
    right = (diff["clean"] > 0).tolist()
    chosen = [r for r, ok in zip(records, right) if ok]

    def counts(key: str) -> dict[str, list[int]]:
        values = sorted({r["meta"][key] for r in records})
        return {str(v): [sum(r["meta"][key] == v for r in records), sum(r["meta"][key] == v for r in chosen)]
                for v in values}

    kept_mask = torch.tensor(right)
    report = {
        "generated": len(records), "kept": len(chosen),
        "per_template_generated_kept": counts("template"), "per_order_generated_kept": counts("order"),
        "top1_rate_all": round(float(diff["top1"].float().mean()), 4),
        "top1_rate_kept": round(float(diff["top1"][kept_mask].float().mean()), 4) if chosen else None,
        "logit_diff_clean_mean_all": round(float(diff["clean"].mean()), 4),
        "logit_diff_clean_mean_kept": round(float(diff["clean"][kept_mask].mean()), 4) if chosen else None,
        "logit_diff_corrupted_mean_kept": round(float(diff["corrupted"][kept_mask].mean()), 4) if chosen else None,
    }
    return chosen, report
