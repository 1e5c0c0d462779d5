"""Regular languages: the DFA generator (hypothesis), the n-gram layer, predictor and head score against brute
force, the task's prompts and metric, typed errors, discovery and the ``--quick`` analysis."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import circuits
import tasks
from circuits.errors import IncompatibleModelError, InvalidOptionError
from tasks import ngram
from tasks.dfa import DFA, LETTERS, SEP, VOCAB, RejectedStringError, dfa_bank, random_dfa, sequence, states_along
from tasks.regular_languages import (RegularLanguages, distribution_measures, greedy_accuracy, truth_distribution)

seeds = st.integers(0, 2**32 - 1)
FAST = settings(max_examples=60, deadline=None)


def strings_over(alphabet, rng, count=30, max_length=8):
    return [[rng.choice(alphabet) for _ in range(rng.randint(0, max_length))] for _ in range(count)]


def distinguishable(dfa: DFA, s: int, t: int) -> bool:
    """Brute force: some string of length <= n_states is accepted from exactly one of s, t."""
    for length in range(dfa.n_states + 1):
        for word in itertools.product(dfa.alphabet, repeat=length):
            if (dfa.run(word, s) is None) != (dfa.run(word, t) is None):
                return True
    return False


# --- the generator ----------------------------------------------------------------------------------
@FAST
@given(seeds)
def test_random_dfa_shape(seed):
    dfa = random_dfa(random.Random(seed))
    assert 4 <= dfa.n_states <= 12
    assert 1 <= len(dfa.alphabet) <= 18 and all(0 <= a < LETTERS for a in dfa.alphabet)
    for state, out in enumerate(dfa.edges):
        letters, targets = [a for a, _ in out], [t for _, t in out]
        assert 1 <= len(out) <= 3
        assert len(set(letters)) == len(letters) and len(set(targets)) == len(targets)
        assert state not in targets  # no self-loops
    assert not dfa.has_self_loop()


@FAST
@given(seeds, st.integers(1, 40))
def test_sampled_strings_are_accepted(seed, length):
    rng = random.Random(seed)
    dfa = random_dfa(rng)
    for automaton in (dfa, dfa.minimised()):
        string = automaton.sample(length, rng)
        assert len(string) == length and automaton.accepts(string)


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_minimised_dfa_has_the_same_language_and_is_minimal(seed):
    rng = random.Random(seed)
    dfa = random_dfa(rng)
    small = dfa.minimised()
    assert small.n_states <= dfa.n_states and set(small.alphabet) <= set(dfa.alphabet)
    probes = [dfa.sample(rng.randint(1, 20), rng) for _ in range(10)]
    probes += [small.sample(rng.randint(1, 20), rng) for _ in range(10)]
    probes += strings_over(dfa.alphabet, rng)  # mostly rejected strings
    for word in probes:
        assert dfa.accepts(word) == small.accepts(word), word
    for s, t in itertools.combinations(range(small.n_states), 2):  # no two states equivalent
        assert distinguishable(small, s, t)
    # canonical: minimising again, or minimising a relabelled copy, gives the same transition table
    assert small.minimised().key == small.key
    order = list(range(1, dfa.n_states))
    rng.shuffle(order)
    relabel = dict(zip(range(dfa.n_states), [0] + order))
    permuted = [None] * dfa.n_states
    for state, out in enumerate(dfa.edges):
        permuted[relabel[state]] = {a: relabel[t] for a, t in out}
    assert DFA.build(permuted).minimised().key == small.key


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 10**6))
def test_bank_is_distinct_and_train_test_disjoint(seed):
    train, test = tasks.dfa_training.banks(tasks.dfa_training.Recipe(train_dfas=200, test_dfas=60, seed=seed))
    assert len({d.key for d in train}) == 200 and len({d.key for d in test}) == 60
    assert not {d.key for d in train} & {d.key for d in test}
    assert not any(d.has_self_loop() for d in train + test)
    assert all(d.minimised().key == d.key for d in test)


@FAST
@given(seeds)
def test_sequence_strings_and_states(seed):
    rng = random.Random(seed)
    dfa = dfa_bank(1, seed)[0]
    seq = sequence(dfa, rng, (3, 6), (1, 5))
    strings = [list(g) for is_sep, g in itertools.groupby(seq.tokens, lambda t: t == SEP) if not is_sep]
    assert 3 <= len(strings) <= 6 and all(1 <= len(s) <= 5 and dfa.accepts(s) for s in strings)
    for i, token in enumerate(seq.tokens):
        start = max((j + 1 for j in range(i + 1) if seq.tokens[j] == SEP), default=0)
        assert seq.states[i] == dfa.run(seq.tokens[start:i + 1])


# --- n-grams against brute force ---------------------------------------------------------------------
def brute_matches(tokens, i, n):
    return [j for j in range(i + 1) if j >= n - 1 and all(tokens[j - 1 - s] == tokens[i - s] for s in range(n - 1))]


@FAST
@given(seeds, st.integers(1, 4))
def test_ngram_attention_is_a_count(seed, n):
    g = torch.Generator().manual_seed(seed % 2**31)
    tokens = torch.randint(0, 3, (2, 15), generator=g)  # 3 symbols: many repeated n-grams
    values = torch.randn(2, 15, 4, generator=g)
    out = ngram.NGramAttention(n)(tokens, values)
    for b in range(2):
        row = tokens[b].tolist()
        for i in range(15):
            js = brute_matches(row, i, n)
            expected = values[b, js].mean(0) if js else torch.zeros(4)
            assert torch.allclose(out[b, i], expected, atol=1e-5)


@FAST
@given(seeds, st.integers(1, 4))
def test_ngram_predictor_is_a_back_off_count(seed, n):
    g = torch.Generator().manual_seed(seed % 2**31)
    tokens = torch.randint(0, 4, (1, 16), generator=g)
    tokens[0, tokens[0] == 3] = SEP  # separators in the context are never predicted
    prediction = ngram.ngram_predictor(tokens, n, VOCAB)
    row = tokens[0].tolist()
    for i in range(16):
        expected = torch.zeros(VOCAB)
        expected[:LETTERS] = 1 / LETTERS
        for order in range(n, 0, -1):
            followers = [row[j] for j in brute_matches(row, i, order) if row[j] < LETTERS]
            if followers:
                expected = torch.zeros(VOCAB)
                for f in followers:
                    expected[f] += 1 / len(followers)
                break
        assert torch.allclose(prediction[0, i], expected, atol=1e-6), (i, row)


def test_head_scores_on_hand_built_patterns():
    tokens = torch.tensor([[0, 1, 0, 1, 2, 0, 1, 0, 2, 1]])
    matching = ngram.NGramAttention(2).pattern(tokens)[0]
    uniform = torch.tril(torch.ones(10, 10)) / torch.arange(1, 11)[:, None]
    previous = torch.diag(torch.ones(9), -1)
    previous[0, 0] = 1.0
    pattern = torch.stack([matching, uniform, previous])[None]  # [1, 3 heads, q, k]
    queries = torch.ones(1, 10, dtype=torch.bool)
    scores, baseline = ngram.head_scores(pattern, tokens, 2, queries)
    counted = [i for i in range(10) if brute_matches(tokens[0].tolist(), i, 2)]
    expected_baseline = sum(len(brute_matches(tokens[0].tolist(), i, 2)) / (i + 1) for i in counted) / len(counted)
    expected_previous = sum(float(i - 1 in brute_matches(tokens[0].tolist(), i, 2)) for i in counted) / len(counted)
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(expected_baseline)
    assert baseline == pytest.approx(expected_baseline) and scores[2] == pytest.approx(expected_previous)


# --- typed errors ------------------------------------------------------------------------------------
def test_errors_name_the_bad_value():
    with pytest.raises(InvalidOptionError, match="25"):
        random_dfa(random.Random(0), alphabet=(4, 25))
    with pytest.raises(InvalidOptionError, match="d_vocab=15"):
        RegularLanguages(model_config=circuits.models.ToyConfig(d_vocab=15, n_ctx=128))
    with pytest.raises(InvalidOptionError, match="at least one state"):
        DFA.build([])
    with pytest.raises(InvalidOptionError, match="at least one edge"):
        DFA.build([{}, {}])
    with pytest.raises(InvalidOptionError, match="state 7"):
        DFA.build([{0: 7}])
    dfa = DFA.build([{0: 1}, {1: 0}])
    with pytest.raises(RejectedStringError, match=r"\[0, 0\].*letter 0 at index 1"):
        dfa.check_accepts([0, 0])
    with pytest.raises(RejectedStringError, match="letter 1 at index 0"):
        states_along(dfa, [0, 1, SEP, 1])
    with pytest.raises(InvalidOptionError, match="token 23"):
        states_along(dfa, [0, 23])
    with pytest.raises(InvalidOptionError, match="token 20"):
        ngram.ngram_predictor(torch.tensor([[0, 20]]), 2, VOCAB)
    with pytest.raises(InvalidOptionError, match="0"):
        ngram.NGramAttention(0)
    recipe = tasks.dfa_training.Recipe(strings=(1, 1), length=(1, 2), train_dfas=20, test_dfas=5)
    short = RegularLanguages(recipe=recipe)
    with pytest.raises(InvalidOptionError, match="found 0 of 3"):
        short.sample_batch(3, seed=0)


# --- the task ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick():
    return RegularLanguages.quick()


@pytest.fixture(scope="module")
def quick_model(quick):
    """The quick model (~15 s of training on first use, then read from $CIRCUITS_CACHE)."""
    return quick.model(progress=False)


def test_batch_and_metric(quick, quick_model):
    batch = quick.batch(quick_model, n=24, seed=3)
    batch.validate(quick_model)
    rows = torch.arange(24)
    p = batch.position
    assert (p >= quick.recipe.seq_len // 2).all()
    for k in range(quick.kept):  # the current n-gram is shared, the rest of the context is not
        assert torch.equal(batch.clean[rows, p - k], batch.corrupted[rows, p - k])
    assert all(not torch.equal(batch.clean[i, :p[i] - 1], batch.corrupted[i, :p[i] - 1]) for i in range(24))
    allowed = batch.answer > 0
    assert allowed[:, LETTERS:].sum() == 0 and allowed.sum(1).min() >= 1
    assert allowed[rows, batch.clean[rows, p + 1]].all()  # the sampled next letter is allowed
    logits = circuits.forward.logits(quick_model, batch.clean, batch.position)
    expected = torch.log((logits.softmax(-1) * allowed).sum(-1))
    assert torch.allclose(quick.metric(logits, batch), expected, atol=1e-5)
    with pytest.raises(IncompatibleModelError, match="d_vocab=64"):
        quick.batch(circuits.models.toy(d_vocab=64, n_ctx=64), n=2, seed=0)


def test_measures_on_known_distributions(quick):
    data = quick.evaluation(n=8)
    truth = truth_distribution(data)
    perfect = distribution_measures(truth, data)
    assert perfect["accuracy"] == 1.0 and perfect["tv_dfa"] == pytest.approx(0.0, abs=1e-6)
    on_separator = torch.zeros_like(truth)
    on_separator[..., SEP] = 1.0
    assert greedy_accuracy(on_separator, data) == 0.0
    assert distribution_measures(on_separator, data)["tv_dfa"] == pytest.approx(1.0)
    bigram = ngram.ngram_predictor(data.tokens, 2, VOCAB)
    assert distribution_measures(bigram, data)["tv_2gram"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("engine", ["activation_patching", "path_patching"])
def test_discover_runs(quick, quick_model, engine):
    graph = circuits.discover(quick_model, quick, engine=engine, n=8, seed=0)
    assert graph.meta["metric_clean"] > graph.meta["metric_corrupted"]
    assert len(graph.top(8, by="signed")) == 8


def test_registered():
    assert isinstance(tasks.get("regular_languages"), RegularLanguages)


def test_quick_analysis(tmp_path, quick_model):
    from analyses import regular_languages as analysis
    analysis.main(["--quick", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0.0 <= summary["model"]["accuracy"] <= 1.0 and summary["model"]["tv_2gram"] >= 0.0
    for name in ("attention.png", "tv_vs_step.png", "head_scores.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "greedy accuracy" in (tmp_path / "table.md").read_text()
