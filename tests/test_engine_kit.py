"""The engine kit and the vocabulary every engine shares: `measure` on a batch you have, one normalisation,
named rankings, edges that say which effect they measure, option names checked with typed errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuits import engines, models
from circuits import graph as graph_module
from circuits.engines import kit
from circuits.engines.base import EngineBase
from circuits.errors import (InvalidOptionError, MissingOptionError, MixedEffectsError, RenamedError,
                             RenamedOptionError, UndefinedScoreError)
from circuits.graph import EFFECTS, HeadGraph
from circuits.nodes import MLP, Head, Input, Readout, all_heads, all_mlps, parse_node
from tests.references import RandomTokens

TASK = RandomTokens(seq_len=8)
OPTIONS = {"path_patching": {"per_input": False}, "edge_attribution": {"steps": 2}, "cdt": {"receiver_count": 2},
           "clamped_training": {"steps": 3, "eval_every": 1, "interaction_heads": 2, "progress": False}}


def small_model():
    return models.toy(n_layers=2, n_heads=2, d_model=16, d_vocab=32, n_ctx=16, seed=11)


@pytest.mark.parametrize("engine_name", engines.names())
def test_run_is_measure_then_graph(engine_name):
    """`run` is the task's batch measured (`measure`, the public way to score a batch you built) and drawn
    (`graph`); the measurement records the batch it measured, made ready for the model."""
    engine = engines.get(engine_name, **OPTIONS.get(engine_name, {}))
    assert isinstance(engine, EngineBase) and callable(engine.measure) and isinstance(engine.score_meaning, str)
    model = small_model()
    batch = TASK.batch(model, n=3, seed=0)
    measured = engine.measure(model, TASK, batch)
    assert isinstance(measured, kit.Measurement) and measured.batch.size == 3
    graph = engine.graph(model, measured)
    ran = engine.run(model, TASK, n=3, seed=0)
    assert {k: v for k, v in ran.meta.items() if k in graph.meta} == graph.meta
    assert ran.scores() == graph.scores() and set(ran.nx.edges) == set(graph.nx.edges)
    assert ran.meta["n"] == 3 and ran.meta["metric_clean"] == measured.clean


@pytest.mark.parametrize("engine_name", [name for name in engines.names() if name != "clamped_training"])
def test_every_edge_says_which_effect_it_measures(engine_name):
    graph = engines.get(engine_name, **OPTIONS.get(engine_name, {})).run(small_model(), TASK, n=3, seed=0)
    effects = [effect for _, _, effect in graph.nx.edges(data="effect")]
    assert effects and set(effects) <= set(EFFECTS)


def test_selections_refuse_to_mix_effects_unless_told():
    """CD-T writes total effects into the logits and receiver shares between heads: different units."""
    graph = engines.get("cdt", receiver_count=2).run(small_model(), TASK, n=3, seed=0)
    assert set(graph.effects()) == {"total", "share"}
    for select in (lambda **kw: graph.top_edges(3, by="absolute", **kw),
                   lambda **kw: graph.greedy_edges(3, by="absolute", **kw),
                   lambda **kw: graph.threshold_edges(0.0, by="absolute", **kw)):
        with pytest.raises(MixedEffectsError, match="different effects"):
            select()
        assert all(graph.nx.edges[u, v]["effect"] == "total" for u, v, _ in select(effect="total"))
    with pytest.raises(InvalidOptionError, match="'indirect'"):
        graph.top_edges(3, by="absolute", effect="indirect")


def test_rankings_have_no_default_and_name_the_choices():
    graph = HeadGraph.from_scores(torch.tensor([[0.1, -0.7]]))
    with pytest.raises(MissingOptionError, match="'absolute', 'signed'"):
        graph.top(1)
    with pytest.raises(RenamedOptionError, match='by="absolute"'):
        graph.top(1, by_magnitude=True)
    assert graph.top(1, by="absolute") == [("L0H1", pytest.approx(-0.7))]
    assert graph.top(1, by="signed") == [("L0H0", pytest.approx(0.1))]


@pytest.mark.parametrize("name, old, new", [("cdt", "receivers", "receiver_count"), ("cdt", "top_k", "sources_per_step"),
                                            ("clamped_training", "top_k", "interaction_heads")])
def test_renamed_options_name_their_new_name(name, old, new):
    with pytest.raises(RenamedOptionError, match=f"'{old}'.*'{new}'"):
        engines.get(name, **{old: 1})


def test_unknown_options_list_the_valid_ones():
    with pytest.raises(InvalidOptionError, match="no option 'steps'.*direction, per_position, positions, memory_mb"):
        engines.get("activation_patching", steps=3)


def test_renamed_functions_name_their_new_name():
    with pytest.raises(RenamedError, match="native_copy"):
        models.unwrapped  # noqa: B018
    with pytest.raises(RenamedError, match=r"Head\(layer, head\).name"):
        graph_module.head_name  # noqa: B018


def test_one_normalisation():
    baseline = kit.Baseline(clean=3.0, corrupted=1.0)
    assert baseline.normalise(1.0, "denoising") == 0.5 and baseline.normalise(-1.0, "noising") == 0.5
    assert baseline.score(3.0, "denoising") == 1.0 and baseline.score(1.0, "noising") == 1.0
    with pytest.raises(UndefinedScoreError, match="no gap"):
        kit.Baseline(clean=1.0, corrupted=1.0)


def test_runs_give_base_and_source_with_the_swap():
    model = small_model()
    batch = TASK.batch(model, n=3, seed=0)
    denoising = kit.Runs.prepare(model, TASK, batch, "denoising", [(1, "z")])
    noising = kit.Runs.prepare(model, TASK, batch, "noising", [(1, "z")])
    # the same prompts in the other half of the stacked pass: equal up to float rounding
    assert torch.allclose(denoising.base[1, "z"], noising.source[1, "z"], atol=1e-6)
    assert torch.allclose(denoising.change((1, "z")), -noising.change((1, "z")), atol=1e-6)
    assert denoising.clean_metric == pytest.approx(noising.clean_metric, abs=1e-6)
    assert denoising.corrupted_metric == pytest.approx(noising.corrupted_metric, abs=1e-6)
    half = denoising.rows(range(1, 3))
    assert half.batch.size == 2 and torch.equal(half.base[1, "z"], denoising.base[1, "z"][1:3])


def test_prompts_are_trimmed_once_and_remember_their_length():
    model = small_model()
    batch = TASK.batch(model, n=3, seed=0)
    ready = kit.on_model(model, batch)
    kept = min(batch.clean.shape[1], max(int(batch.position.max()) + 1, 16))  # at least 16 keys: torch's fast softmax
    assert ready.clean.shape[1] == kept and ready.n_positions == batch.clean.shape[1]
    assert kit.on_model(model, ready).clean.shape == ready.clean.shape  # idempotent
    wide = models.toy(n_layers=1, n_heads=2, d_model=16, d_vocab=32, n_ctx=32, seed=11)
    long = dataclasses.replace(TASK, seq_len=24).batch(wide, n=3, seed=0)
    early = dataclasses.replace(long, position=torch.full((3,), 5))
    assert kit.on_model(wide, early).clean.shape[1] == 16 and kit.on_model(wide, early).n_positions == 24
    assert early.trimmed(causal=True, at_least=1).clean.shape[1] == 6


def test_node_vocabulary():
    model = small_model()
    assert [parse_node(n) for n in ("L1H0", "M3", "embed", "logits")] == [Head(1, 0), MLP(3), Input(), Readout()]
    assert [h.name for h in all_heads(model)] == ["L0H0", "L0H1", "L1H0", "L1H1"] and all_mlps(model) == []
    assert all_heads(model.cfg) == all_heads(model)
    with pytest.raises(Exception, match="'L2H0'.*L0H0 .. L1H1"):
        Head.in_model(model, "L2H0")
    with pytest.raises(Exception, match="attention-only"):
        MLP.in_model(model, "M0")
