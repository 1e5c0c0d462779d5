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
    with pytest.raises(facts.TooFewFactsError, match="min_facts=8"):  # before any model work
        FactualRecall(subjects=("France", "Germany", "Italy"))
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
# One instance of each task per module: each keeps its filter's result per model (the filter costs passes).
@pytest.fixture(scope="module")
def recall():
    return FactualRecall(templates=facts.TEMPLATES["capital"][:1])


@pytest.fixture(scope="module")
def capitals():
    return Capitals(templates=Capitals().templates[:1])


@pytest.mark.slow
def test_answer_tokens_and_the_filter(bundled_model, recall):
    model = bundled_model
    assert facts.answer_token(model, "Paris") == facts.encode(model, " Paris", bos=False)[0]
    with pytest.raises(facts.MultiTokenAnswerError, match="New Delhi"):
        facts.answer_token(model, "New Delhi")
    known = recall.known(model)[0]
    assert known.template == facts.TEMPLATES["capital"][0]
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
def test_capitals_prompts_put_the_other_city_in_context(bundled_model, capitals):
    model = bundled_model
    task = capitals
    capital = facts.relation("capital").facts
    for p in task.counterfactuals(model, 12, seed=0):
        clean, corrupted = model.tokenizer.decode(p.clean), model.tokenizer.decode(p.corrupted)
        assert f"The capital of {p.country} is {p.other_city}." in clean
        assert f"The capital of {p.country} is {capital[p.country]}." in corrupted
        assert len(p.clean) == len(p.corrupted) and p.other_city != capital[p.country]
        assert p.in_context == facts.answer_token(model, p.other_city)


@pytest.mark.slow
def test_too_few_known_facts_is_a_typed_error(bundled_model):
    # New Delhi and Mexico City are two tokens: only France can survive the filter.
    task = FactualRecall(subjects=("France", "India", "Mexico"), templates=facts.TEMPLATES["capital"][:1], min_facts=2)
    with pytest.raises(facts.TooFewFactsError, match="at most 1 facts"):
        task.batch(bundled_model, 4, 0)
    template = facts.TEMPLATES["landmark"][0]
    both_london = facts.Known("landmark", template, ("Big Ben", "Westminster Abbey"), total=2, single_token=2)
    with pytest.raises(facts.TooFewFactsError, match="same length"):  # equal answers make no pair
        facts.pair_prompts(bundled_model, [both_london], 4, 0)


@pytest.mark.slow
def test_both_tasks_through_discover(bundled_model, recall, capitals):
    graph = circuits.discover(bundled_model, recall, engine="activation_patching", n=2, seed=0)
    assert graph.meta["task"] == "factual_recall" and graph.meta["metric_clean"] > graph.meta["metric_corrupted"]
    assert torch.isfinite(graph.matrix()).all()
    late = tuple(f"L{l}H{h}" for l in range(26, 30) for h in range(9))
    graph = circuits.discover(bundled_model, capitals, engine="path_patching", n=2, seed=0, receivers=("logits",),
                              senders=late)
    assert graph.meta["task"] == "capitals"
    assert graph.meta["metric_clean"] > graph.meta["metric_corrupted"]  # the context moves the answer
    assert len([e for e in graph.nx.edges if e[1] == circuits.LOGITS]) == len(late)


@pytest.mark.slow
def test_capitals_prompts_mark_the_country_the_city_and_the_end(bundled_model, capitals):
    from tasks.capitals import SPANS

    batch = capitals.batch(bundled_model, 4, seed=3)
    pairs = capitals.counterfactuals(bundled_model, 4, seed=3)
    assert batch.span_names == SPANS
    decode = bundled_model.tokenizer.decode
    for row, pair in enumerate(pairs):
        at = {name: (batch.spans[row] == i).nonzero().flatten().tolist() for i, name in enumerate(SPANS)}
        assert at["city"] == (batch.clean[row] != batch.corrupted[row]).nonzero().flatten().tolist()
        assert decode(batch.clean[row, at["city"]]).strip() == pair.other_city
        assert at["end"] == [int(batch.position[row])]
        country = decode(batch.clean[row, at["country"]])
        assert country.split() == [pair.country] * 3 or country.replace(" ", "") == pair.country.replace(" ", "") * 3


@pytest.mark.slow
def test_factual_recall_prompts_mark_the_subject_and_the_end(bundled_model, recall):
    from tasks.factual_recall import SPANS

    batch = recall.batch(bundled_model, 4, seed=3)
    pairs = recall.pairs(bundled_model, 4, seed=3)
    assert batch.span_names == SPANS
    for row, pair in enumerate(pairs):
        at = {name: (batch.spans[row] == i).nonzero().flatten().tolist() for i, name in enumerate(SPANS)}
        assert at["end"] == [int(batch.position[row])]
        differs = (batch.clean[row] != batch.corrupted[row]).nonzero().flatten().tolist()
        assert set(differs) <= set(at["subject"])
        assert bundled_model.tokenizer.decode(batch.clean[row, at["subject"]]).strip() == pair.subject


# --- the analyses ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_scaled_runs_match_a_full_forward_with_hooks(bundled_model, capitals):
    """`scaled_top1` restarts at the scaled layer on cached residuals; the reference runs the whole model
    with TransformerLens's own hook context."""
    from analyses import _readout

    model = bundled_model
    batch = capitals.batch(model, 3, seed=5)
    cached = _readout.read_out(model, batch.clean, batch.position, keep_resid=True)
    conditions = [{(23, 4): 0.0}, {(23, 1): 4.0, (25, 2): 0.5}]
    for readout_only in (False, True):
        got = _readout.scaled_top1(model, cached, batch.position, conditions, readout_only)
        for row, condition in enumerate(conditions):
            def scale(z, hook, layer):
                z = z.clone()
                for (l, h), alpha in condition.items():
                    if l == layer:
                        if readout_only:
                            z[torch.arange(3), batch.position, h] *= alpha
                        else:
                            z[:, :, h] *= alpha
                return z
            fwd = [(circuits.hooks.site(model, l, "z"), lambda z, hook, l=l: scale(z, hook, l))
                   for l in {l for l, _ in condition}]
            with torch.no_grad(), model.hooks(fwd_hooks=fwd):
                logits = model(batch.clean)
            expected = logits[torch.arange(3), batch.position].argmax(-1)
            assert got[row].tolist() == expected.tolist()


@pytest.mark.slow
def test_capitals_analysis_quick(bundled_model, tmp_path):
    from analyses import capitals

    summary = capitals.run(quick=True, out=tmp_path, model=bundled_model)
    assert {p.name for p in tmp_path.iterdir()} >= {"heads.png", "scaling.png", "pruning.png", "summary.json"}
    base = summary["baseline"]
    assert base["n"] == capitals.QUICK.n_eval and base["in_context"] + base["memorised"] <= 1
    assert set(summary["find_countries"]).isdisjoint(summary["held_out_countries"])
    for mode in capitals.MODES:
        curve = summary["scaling"][mode]["top context head"]
        assert curve["rates"][curve["alpha"].index(1.0)]["in_context"] == base["in_context"]
    assert summary["attribution_top"]["context"][0][1] > 0 > summary["attribution_top"]["memory"][0][1]


@pytest.mark.slow
def test_factual_recall_analysis_quick(bundled_model, tmp_path):
    from analyses import factual_recall

    summary = factual_recall.run(quick=True, out=tmp_path, model=bundled_model)
    assert {p.name for p in tmp_path.iterdir()} >= {"layers.png", "topic_heads.png", "regression.png", "paths.png",
                                                    "paths.json", "summary.json"}
    capital = summary["relations"]["capital"]
    # The components' direct contributions add up to the full run's centred answer logit.
    assert capital["decomposition_max_error"] < 1e-3 * max(1.0, capital["centred_answer_logit_mean"])
    assert len(capital["attn_mean"]) == bundled_model.cfg.n_layers and capital["n"] >= 20
    assert len(summary["topic_heads"]) == factual_recall.QUICK.top_heads
    graph = circuits.HeadGraph.from_json(tmp_path / "paths.json")
    assert graph.meta["task"] == "factual_recall"
