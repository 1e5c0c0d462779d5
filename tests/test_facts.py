"""The shipped facts, prompt building, the top-1 filter, the factual_recall and capitals tasks, and the
fact analyses' --quick forms (on the bundled SmolLM2: marked slow, one model load per session)."""

import tomllib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import circuits
import tasks
from circuits.errors import InvalidOptionError, UnknownNameError
from tasks import facts
from tasks.capitals import Capitals
from tasks.factual_recall import FactualRecall

ROOT = Path(__file__).resolve().parents[1]


# --- data and prompt building, no model ---------------------------------------------------------------------
def test_shipped_data_has_the_relations_and_templates():
    assert len(facts.relation("capital").facts) >= 60
    assert {"language", "landmark"} <= set(facts.relation_names())
    for name in facts.relation_names():
        rel = facts.relation(name)
        assert len(rel.templates) >= 3 and all(facts.PLACEHOLDER in t for t in rel.templates)
        assert all(isinstance(a, str) and a for a in rel.facts.values())


def test_package_data_is_listed_for_wheels():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["tasks"]
    assert any((ROOT / "tasks").glob(p) for p in patterns)
    assert (ROOT / "tasks" / "data" / "facts.json") in {f for p in patterns for f in (ROOT / "tasks").glob(p)}


def test_typed_errors_name_the_bad_value():
    with pytest.raises(UnknownNameError, match="Atlantis"):
        facts.relation("capital").answer("Atlantis")
    with pytest.raises(UnknownNameError, match="'colour'"):
        facts.relation("colour")
    with pytest.raises(InvalidOptionError, match="The capital is"):
        facts.check_template("The capital is")
    with pytest.raises(UnknownNameError, match="Atlantis"):
        FactualRecall(subjects=("France", "Atlantis"))
    with pytest.raises(InvalidOptionError, match="no subject here"):
        FactualRecall(templates=("no subject here",))
    with pytest.raises(InvalidOptionError, match=r"\{other\}"):
        Capitals(templates=("The capital of {subject} is",))
    assert {"factual_recall", "capitals"} <= set(tasks.names())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), min_size=1, max_size=7), min_size=1, max_size=6))
def test_padded_keeps_each_prompt_and_its_last_position(prompts):
    tokens, position = facts.padded(prompts, pad=99)
    assert tokens.shape == (len(prompts), max(map(len, prompts)))
    for row, prompt, last in zip(tokens.tolist(), prompts, position.tolist()):
        assert row[: len(prompt)] == prompt and last == len(prompt) - 1
        assert all(t == 99 for t in row[len(prompt):])


# --- on the bundled model -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recall():
    return FactualRecall(templates=facts.TEMPLATES["capital"][:2])  # two templates: the filter costs passes


@pytest.mark.slow
def test_answer_tokens_and_the_filter(bundled_model):
    model = bundled_model
    assert facts.answer_token(model, "Paris") == facts.encode(model, " Paris", bos=False)[0]
    with pytest.raises(facts.MultiTokenAnswerError, match="New Delhi"):
        facts.answer_token(model, "New Delhi")
    known = facts.known_facts(model, "capital")
    rel = facts.relation("capital")
    assert 20 <= len(known.subjects) <= known.single_token < known.total == len(rel.facts)
    # Reference: TransformerLens's own forward pass (not circuits.forward), one prompt at a time.
    rejected = [s for s in rel.facts if facts.is_single_token(model, rel.facts[s]) and s not in known.subjects]
    with torch.no_grad():
        for subject, expected in [(s, True) for s in known.subjects[:3]] + [(s, False) for s in rejected[:2]]:
            ids = torch.tensor([facts.encode(model, known.template.format(subject=subject))])
            top = model(ids)[0, -1].argmax().item()
            assert (top == facts.answer_token(model, rel.facts[subject])) == expected, subject
    assert ids[0, 0].item() == model.tokenizer.bos_token_id


@pytest.mark.slow
def test_factual_recall_pairs_have_equal_lengths_and_differ_only_in_the_subject(bundled_model, recall):
    model = bundled_model
    pairs = recall.pairs(model, 24, seed=3)
    rel = facts.relation("capital")
    for p in pairs:
        assert len(p.clean) == len(p.corrupted) and p.answer != p.foil
        assert list(p.clean) == facts.encode(model, p.template.format(subject=p.subject))
        assert list(p.corrupted) == facts.encode(model, p.template.format(subject=p.other))
        assert p.answer == facts.answer_token(model, rel.facts[p.subject])
        assert p.foil == facts.answer_token(model, rel.facts[p.other])
    batch = recall.batch(model, 24, seed=3)
    batch.validate(model)
    assert torch.equal(batch.answer, torch.tensor([p.answer for p in pairs]))
    assert batch.position.tolist() == [len(p.clean) - 1 for p in pairs]
    assert recall.batch(model, 24, seed=3).clean.equal(batch.clean)  # seeded


@pytest.mark.slow
def test_capitals_prompts_put_the_other_city_in_context(bundled_model):
    model = bundled_model
    task = Capitals(templates=Capitals().templates[:1])
    capital = facts.relation("capital").facts
    for p in task.counterfactuals(model, 12, seed=0):
        clean, corrupted = model.tokenizer.decode(p.clean), model.tokenizer.decode(p.corrupted)
        assert f"The capital of {p.country} is {p.other_city}." in clean
        assert f"The capital of {p.country} is {capital[p.country]}." in corrupted
        assert len(p.clean) == len(p.corrupted) and p.other_city != capital[p.country]
        assert p.in_context == facts.answer_token(model, p.other_city)


@pytest.mark.slow
def test_too_few_known_facts_is_a_typed_error(bundled_model):
    with pytest.raises(facts.TooFewFactsError, match="min_facts=8"):
        FactualRecall(subjects=("France", "Germany", "Italy"), templates=facts.TEMPLATES["capital"][:1]).batch(
            bundled_model, 4, 0)
    with pytest.raises(facts.TooFewFactsError, match="same length"):  # both answer London: no pair
        FactualRecall(relation="landmark", subjects=("Big Ben", "Westminster Abbey", "the Tower of London"),
                      templates=facts.TEMPLATES["landmark"][:1], min_facts=2).batch(bundled_model, 4, 0)


@pytest.mark.slow
def test_both_tasks_through_discover(bundled_model, recall):
    graph = circuits.discover(bundled_model, recall, engine="activation_patching", n=2, seed=0)
    assert graph.meta["task"] == "factual_recall" and graph.meta["metric_clean"] > graph.meta["metric_corrupted"]
    assert torch.isfinite(graph.matrix()).all()
    late = tuple(f"L{l}H{h}" for l in range(26, 30) for h in range(9))
    graph = circuits.discover(bundled_model, Capitals(templates=Capitals().templates[:1]), engine="path_patching",
                              n=2, seed=0, receivers=("logits",), senders=late)
    assert graph.meta["task"] == "capitals"
    assert graph.meta["metric_clean"] > graph.meta["metric_corrupted"]  # the context moves the answer
    assert len([e for e in graph.nx.edges if e[1] == circuits.LOGITS]) == len(late)
