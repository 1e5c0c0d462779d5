"""The CD-T engine: its scores from `decompose` by the documented formulas (baseline and metric gathered here
with plain hooks), agreement with activation patching on induction, the graph it builds, SmolLM2."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits import LOGITS, hooks
from circuits.engines import CDT
from circuits.engines.cdt import decompose
from circuits.errors import InvalidOptionError
from tests.references import RandomTokens

TASK = RandomTokens(seq_len=8)


def small_model():
    return circuits.models.toy(n_layers=3, n_heads=2, d_model=16, d_vocab=32, n_ctx=16, attn_only=False, d_mlp=32, seed=5)


def z_run(model, tokens):
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    cache = {}
    fwd = [(name, (lambda t, hook, name=name: cache.__setitem__(name, t.detach()))) for name in names]
    with torch.no_grad(), hooks.attached(model, fwd):
        logits = model(tokens)
    return logits, torch.stack([cache[name] for name in names], dim=1)  # [batch, layer, pos, head, d_head]


def test_scores_follow_the_documented_formulas():
    model = small_model()
    batch = TASK.batch(model, n=4, seed=1)
    rows = torch.arange(batch.size)
    clean_logits, z_clean = z_run(model, batch.clean)
    corrupted_logits, z_corrupted = z_run(model, batch.corrupted)
    metric = lambda logits: TASK.metric(logits[rows, batch.position], batch).mean()  # noqa: E731
    gap = metric(clean_logits) - metric(corrupted_logits)
    heads = [f"L{l}H{h}" for l in range(3) for h in range(2)]
    parts = decompose(model, batch.clean, [[h] for h in heads], z_corrupted)
    graph = circuits.discover(model, TASK, engine="cdt", n=4, seed=1, receiver_count=3)
    for i, head in enumerate(heads):
        expected = (metric(parts.rel[i] + parts.irrel[i]) - metric(parts.irrel[i])) / gap
        assert graph.nx.nodes[head]["score"] == pytest.approx(float(expected), abs=1e-4)
        assert graph.nx.edges[head, LOGITS]["score"] == graph.nx.nodes[head]["score"]
    receivers = {r for _, r in graph.nx.in_edges() if r != LOGITS}
    assert len(receivers) == 3 and all(graph.nx.in_degree(r) == 2 * int(r[1]) for r in receivers)
    for sender, receiver in [(s, r) for s, r in graph.nx.edges() if r != LOGITS]:
        layer, head = int(receiver[1]), int(receiver[3])
        change = (z_clean - z_corrupted)[rows, layer, batch.position, head]  # [batch, d_head]
        rel = parts.z_rel[layer][heads.index(sender)][rows, batch.position, head]
        expected = (rel * change).sum() / change.pow(2).sum()
        assert graph.nx.edges[sender, receiver]["score"] == pytest.approx(float(expected), abs=1e-4)


def test_iterative_discovery_walks_back_from_the_logits():
    """sources_per_step=1: a chain from the top head for the logits, each step the head below with the largest |edge|."""
    model = small_model()
    engine = CDT(iterative=True, sources_per_step=1)
    graph = engine.run(model, TASK, n=4, seed=1)
    with torch.no_grad():
        result = engine.measure(model, TASK, TASK.batch(model, n=4, seed=1)).values
    nodes, edges = result.nodes, result.dot
    heads = [(l, h) for l in range(3) for h in range(2)]
    chain = [max(heads, key=lambda x: abs(float(nodes[x])))]
    while below := [x for x in heads if x[0] < chain[-1][0]]:
        chain.append(max(below, key=lambda x: abs(float(edges[x + chain[-1]]))))
    expected = {(f"L{s[0]}H{s[1]}", f"L{r[0]}H{r[1]}") for r, s in zip(chain, chain[1:])}
    assert {(s, r) for s, r in graph.nx.edges() if r != LOGITS} == expected


@pytest.mark.parametrize("options", [dict(receiver_count=-1), dict(sources_per_step=0), dict(memory_mb=-1.0)])
def test_bad_options_are_refused(options):
    with pytest.raises(InvalidOptionError):
        CDT(**options)


def test_top_layer_1_head_agrees_with_activation_patching_on_induction(induction, induction_model):
    cdt = circuits.discover(induction_model, induction, engine="cdt", n=32, seed=0, receiver_count=0)
    patching = circuits.discover(induction_model, induction, engine="activation_patching", n=32, seed=0)
    layer_1 = lambda g: max(range(4), key=lambda h: g.matrix()[1, h])  # noqa: E731
    assert layer_1(cdt) == layer_1(patching)


@pytest.mark.slow
def test_smollm2_runs_and_is_exact(bundled_model):
    """Set 0 has no source: its irrel is our forward pass, which must be the model's. With both parts through
    every rule (real_totals=False), rel + irrel must equal the logits: to 1e-6 of our own pass in float64;
    in float32 to 3e-3, the rounding of sums whose parts reach the size of SmolLM2's residual stream (2e4;
    measured 1.5e-3). The default fast path must give the float64 rel to that float32 rounding."""
    tokens = torch.randint(1000, 20000, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = bundled_model(tokens)
    sources = [[], ["L3H2"], ["L20H7", ("L25H1", 5)]]
    options = dict(keep_residual=False, keep_z=False)
    rules = decompose(bundled_model, tokens, sources, real_totals=False, **options)
    assert rules.rel[1:].abs().max() > 1e-2 and not rules.rel[0].any()
    torch.testing.assert_close(rules.irrel[0], logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(rules.rel + rules.irrel, logits.expand_as(rules.rel), atol=3e-3, rtol=0)
    wide = decompose(bundled_model, tokens, sources, real_totals=False, dtype=torch.float64, **options)
    torch.testing.assert_close(wide.rel + wide.irrel, wide.irrel[:1].expand_as(wide.rel), atol=1e-6, rtol=0)
    fast = decompose(bundled_model, tokens, sources, **options)
    torch.testing.assert_close(fast.rel.double(), wide.rel, atol=3e-3, rtol=0)
