"""Ground truth: the hand-weighted known-circuit models, the AUROC by the rank formula, `analyses.ground_truth`."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from analyses import ground_truth
from circuits import forward
from circuits.engines import PathPatching
from circuits.nodes import all_edges
from circuits.errors import UnknownNameError
from tasks.known_circuits import VARIANTS, known


def pairwise_auroc(scores, known_edges):
    """AUROC as the probability that a known edge outranks another (ties: one half), counted pair by pair."""
    rank = {e: float("-inf") if s is None else abs(s) for e, s in scores.items()}
    pairs = [(p, q) for p in scores if p in known_edges for q in scores if q not in known_edges]
    return sum(1.0 if rank[p] > rank[q] else 0.5 if rank[p] == rank[q] else 0.0 for p, q in pairs) / len(pairs)


def test_auroc_by_ranks_equals_the_pairwise_count():
    rng = random.Random(0)
    for trial in range(20):
        edges = [(f"s{i}", "logits", None) for i in range(30)]
        # ties on purpose (rounded values), and unscored edges (None) that rank last
        scores = {e: None if rng.random() < 0.2 else round(rng.uniform(-1, 1), 1) for e in edges}
        chosen = set(rng.sample(edges, rng.randint(1, 10)))
        assert ground_truth.auroc(scores, chosen) == pytest.approx(pairwise_auroc(scores, chosen), abs=1e-12)
    perfect = {("a", "b", None): 2.0, ("c", "b", None): -0.5, ("d", "b", None): None}
    assert ground_truth.auroc(perfect, {("a", "b", None)}) == 1.0
    assert ground_truth.auroc(perfect, {("d", "b", None)}) == 0.0
    with pytest.raises(ValueError, match="not edges"):
        ground_truth.auroc(perfect, {("x", "b", None)})


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_known_circuit_is_exactly_the_edges_with_an_effect(variant):
    """By construction: the model does the task, and exact path patching with frozen MLPs (each edge's direct path
    alone) finds an effect on the known edges and none (1e-5) on any other edge of the graph."""
    task = known(variant)
    model = task.default_model()
    batch = task.batch(model, n=8, seed=0)
    with torch.no_grad():
        clean = task.metric(forward.logits(model, batch.clean, batch.position), batch)
        corrupted = task.metric(forward.logits(model, batch.corrupted, batch.position), batch)
    assert clean.min() > 3.5 and corrupted.max() < 0.5
    graph = PathPatching(freeze_mlps=True).run(model, task, n=8, seed=0)
    scores = ground_truth.edge_scores(graph, model)
    assert set(scores) == set(all_edges(model)) and None not in scores.values()
    for edge, score in scores.items():
        if edge in task.edges:
            assert abs(score) > 0.1, edge
        else:
            assert abs(score) < 1e-5, (edge, score)
    assert ground_truth.auroc(scores, set(task.edges)) == 1.0


def test_unknown_variant_is_a_typed_error():
    with pytest.raises(UnknownNameError, match="'induction_attention'.*induction_heads"):
        known("induction_attention")


def test_quick_table(tmp_path, capsys):
    summary = ground_truth.main(["--quick", "--out", str(tmp_path), "--n", "4"])
    printed = capsys.readouterr().out
    assert (tmp_path / "summary.json").exists()
    for label, variant in itertools.product(ground_truth.QUICK_ENGINES, VARIANTS):
        result = summary["results"][label][variant]
        assert 0.0 <= result["auroc"] <= 1.0 and f"| {label} |" in printed
        assert f"{label} on {variant}: " + ("finds" if result["auroc"] == 1.0 else "does not") in printed
    # CD-T decomposes head outputs only: the known embed edges are unscored, so it cannot rank them first
    cdt = summary["results"]["cdt"]["induction_heads"]
    assert cdt["known"]["embed->L0H0<v>"]["rank"] is None and cdt["auroc"] < 1.0
