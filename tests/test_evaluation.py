"""Edge circuits evaluated as MIB evaluates them (`circuits.evaluate`), against a literal reference
(`tests.references.edge_circuit_metric`: each receiver's input rebuilt one edge at a time, each head's attention run
alone) on random float64 toys, and against the head-level mean ablation of `circuits.comparison`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import circuits
from circuits import Edge, models, nodes
from circuits.comparison.faithfulness import MeanAblation, masks
from circuits.engines.base import prompts, session
from circuits.errors import InvalidEdgeError, InvalidOptionError
from circuits.evaluation import ABLATIONS, evaluate, head_circuit
from circuits.evaluation.faithfulness import EdgeIndex, prepare
from tests.references import RandomTokens, edge_circuit_metric, literal_ablations, random_edge_graph
from tests.tiny_hf import save_tiny_llama

TASK = RandomTokens(seq_len=6)
TOYS = {"ln_attn_only": dict(attn_only=True),
        "ln_mlp": dict(attn_only=False, d_mlp=24),
        "rms_rotary_gqa_mlp": dict(attn_only=False, d_mlp=24, normalization="RMS", positional="rotary", n_kv_heads=2)}


pytestmark = pytest.mark.usefixtures("one_thread")


def toy(name, seed=3):
    return models.toy(models.ToyConfig(n_layers=2, n_heads=4, d_model=16, d_head=4, d_vocab=32, n_ctx=16, seed=seed,
                                       **TOYS[name])).to(torch.float64)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random Hugging Face Llama (RMSNorm, rotary, grouped-query attention, SwiGLU MLPs), in float64."""
    return models.load(save_tiny_llama(tmp_path_factory.mktemp("llama") / "model")).to(torch.float64)


def random_circuits(model, count, seed):
    edges = nodes.all_edges(model)
    g = torch.Generator().manual_seed(seed)
    return [frozenset(e for e, keep in zip(edges, torch.rand(len(edges), generator=g) < p) if keep)
            for p in torch.linspace(0.2, 0.9, count).tolist()]


def literal(model, circuits_, ablation, n=6, seed=1):
    with session(model):
        batch = prompts(model, TASK, n, seed)
        reference = prompts(model, TASK, n, seed + 1)
        ablated = literal_ablations(model, batch, ablation, reference)
        return [edge_circuit_metric(model, TASK, batch, c, ablated) for c in circuits_]


@pytest.mark.parametrize("name", list(TOYS))
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_edge_evaluation_equals_the_literal_reference(name, ablation):
    model = toy(name)
    chosen = random_circuits(model, 3, seed=len(name))
    result = evaluate(model, TASK, chosen, ablation=ablation, n=6)
    expected = literal(model, chosen + [frozenset()], ablation)
    assert result.metrics == pytest.approx(expected[:-1], abs=1e-5)
    assert result.empty == pytest.approx(expected[-1], abs=1e-5)
    assert len({round(m, 4) for m in result.metrics}) == len(chosen)  # the circuits differ: not a constant


def test_a_hugging_face_llama_equals_the_literal_reference(llama):
    chosen = random_circuits(llama, 2, seed=5)
    for ablation in ("patching", "mean_positional"):
        result = evaluate(llama, TASK, chosen, ablation=ablation, n=4)
        assert result.metrics == pytest.approx(literal(llama, chosen, ablation, n=4), abs=1e-5)


def test_whole_and_empty_circuits_score_one_and_zero_exactly_and_the_whole_pass_is_the_model():
    model = toy("rms_rotary_gqa_mlp")
    every = frozenset(nodes.all_edges(model))
    result = evaluate(model, TASK, [every, frozenset(), every], ablation="patching", n=6)
    assert result.faithfulness == [1.0, 0.0, 1.0] and result.metrics[0] == result.full
    assert result.empty == pytest.approx(literal(model, [frozenset()], "patching")[0], abs=1e-5)
    # every edge ablated, each to its sender's own clean output (corrupted = clean): every receiver's input is rebuilt,
    # each head's q/k/v projected by the evaluation's own W_Q/W_K/W_V, and the pass must be the plain model's
    with session(model):
        batch = prompts(model, TASK, 6, 1)
        same = dataclasses.replace(batch, corrupted=batch.clean)
        rebuild, logits = prepare(model, TASK, same, "patching", None)
        rebuilt = rebuild.metrics(EdgeIndex.of(model).mask[None])
    assert float(rebuilt[0]) == pytest.approx(float(TASK.metric(logits, batch).mean()), abs=1e-6)


@pytest.mark.parametrize("name", ["ln_mlp", "rms_rotary_gqa_mlp"])
def test_head_circuits_equal_todays_head_mean_ablation(name):
    """A head circuit is "every edge of the kept nodes": under the per-position mean it equals ablating the other
    heads' z (circuits.comparison.faithfulness), and so do the head faithfulness curves built on it."""
    model = toy(name)
    every = [h.name for h in nodes.all_heads(model)]
    kept = [every[:0], every[:3], every[2:7], every]
    result = evaluate(model, TASK, [head_circuit(model, heads) for heads in kept], ablation="mean_positional", n=6)
    with session(model):
        ablation = MeanAblation.prepare(model, TASK, prompts(model, TASK, 6, 1), prompts(model, TASK, 6, 2))
        today = ablation.metrics(masks(kept, model.cfg.n_layers, model.cfg.n_heads)).tolist()
    assert result.metrics == pytest.approx(today, abs=1e-5)
    no_heads = today[0]
    ours = [(m - no_heads) / (result.full - no_heads) for m in result.metrics]
    assert ours == pytest.approx(ablation.faithfulness(masks(kept, 2, 4), no_heads).tolist(), abs=1e-5)


def test_bad_circuits_and_ablations_are_typed_errors_naming_them():
    model = toy("ln_attn_only")
    with pytest.raises(InvalidOptionError, match="'resample'"):
        evaluate(model, TASK, [frozenset()], ablation="resample")
    with pytest.raises(InvalidEdgeError, match="L0H0->M1"):
        evaluate(model, TASK, [{Edge("L0H0", "M1")}])  # an attention-only model has no MLPs
    with pytest.raises(InvalidEdgeError, match="L5H0"):
        evaluate(model, TASK, [{"L5H0->logits"}])
    with pytest.raises(InvalidOptionError, match="circuits\\[0\\]"):
        evaluate(model, TASK, [Edge("L0H0", "logits")])
    one = evaluate(model, TASK, {Edge("L0H0", "logits"), Edge("embed", "L0H0", "v")}, n=4)
    assert len(one.metrics) == 1 and circuits.evaluate is evaluate and circuits.Edge is Edge


# --- MIB's curve and areas ----------------------------------------------------------------------------------
def scored_graph(model, seed):
    """Every edge of `model` scored at random (head receivers' q/k/v apart), as an engine's graph would be."""
    return random_edge_graph(model, torch.Generator().manual_seed(seed), {"engine": f"g{seed}"})


def mib_areas(fractions, faithfulness_signed, faithfulness_absolute):
    """MIB's loop (evaluate_area_under_curve): trapezoids over the fractions, of f and of |1 - f|."""
    under, from_one = 0.0, 0.0
    for i in range(len(fractions) - 1):
        width = fractions[i + 1] - fractions[i]
        under += width * (faithfulness_signed[i] + faithfulness_signed[i + 1]) / 2
        from_one += width * (abs(1 - faithfulness_absolute[i]) + abs(1 - faithfulness_absolute[i + 1])) / 2
    return under, from_one


def test_edge_curves_are_mibs_areas_over_circuits_evaluated_one_by_one():
    from circuits.evaluation import FRACTIONS, edge_curves

    model = toy("ln_mlp")
    graphs = {"a": scored_graph(model, 1), "b": scored_graph(model, 2)}
    result = edge_curves(model, TASK, graphs, ablation="patching", n=6, draws=3)
    total = len(nodes.all_edges(model))
    assert result.total_edges == total == 12 * 1 + 5 + 12 * 6 + 10 + 11  # q/k/v, M0, layer 1 q/k/v, M1, logits
    for label, graph in graphs.items():
        curve = result.curves[label]
        for by, values in (("signed", curve.signed), ("absolute", curve.absolute)):
            one_by_one = [evaluate(model, TASK, [graph.circuit(fraction=f, by=by, total=total)], n=6).faithfulness[0]
                          for f in FRACTIONS]
            assert values == pytest.approx(one_by_one, abs=1e-6)
        assert curve.absolute[-1] == 1.0  # every edge scored: the whole graph at k = 1
        assert (curve.cpr, curve.cmd) == pytest.approx(mib_areas(FRACTIONS, curve.signed, curve.absolute))
        assert curve.edges_signed[0] <= int(0.001 * total) and curve.edges_absolute[-1] == total
    assert len(result.random_draws) == len(FRACTIONS) and all(len(row) == 3 for row in result.random_draws)
    assert result.random.signed == pytest.approx([sum(row) / 3 for row in result.random_draws])
    assert result.random.signed[-1] == 1.0 and "| random |" in result.table()
    from circuits.view.data import curve_data  # the circuit view reads a curve as it is

    shown = curve_data(result.curves["a"].of("absolute"))
    assert shown["absolute"] == pytest.approx(result.curves["a"].absolute, abs=1e-5) and shown["signed"] is None
    assert shown["cmd"] == pytest.approx(result.curves["a"].cmd, abs=1e-5)
    whole = curve_data(result.curves["a"])  # an EdgeCurve as it is: both selections
    assert whole["signed"] == pytest.approx(result.curves["a"].signed, abs=1e-5)
    assert whole["fractions"] == pytest.approx(list(FRACTIONS))


def test_edge_curves_refuse_bad_options():
    from circuits.evaluation import edge_curves

    model = toy("ln_attn_only")
    with pytest.raises(InvalidOptionError, match="fractions"):
        edge_curves(model, TASK, scored_graph(model, 1), fractions=[0.5, 0.1])
    with pytest.raises(InvalidOptionError, match="draws"):
        edge_curves(model, TASK, scored_graph(model, 1), draws=-1)
    with pytest.raises(InvalidOptionError, match="expected a HeadGraph"):
        edge_curves(model, TASK, [object()])


def test_reference_prompts_as_token_ids_and_the_model_left_as_found():
    model = toy("ln_mlp")
    with session(model):
        reference = prompts(model, TASK, 5, 7)
    chosen = random_circuits(model, 2, seed=3)
    as_batch = evaluate(model, TASK, chosen, ablation="mean", n=4, reference=reference)
    ids = reference.clean[:, : int(reference.position.max()) + 1]
    assert (reference.position == ids.shape[1] - 1).all()  # RandomTokens reads every prompt at its last token
    as_ids = evaluate(model, TASK, chosen, ablation="mean", n=4, reference=ids)
    assert as_ids.metrics == pytest.approx(as_batch.metrics, abs=1e-9)
    model.train()
    evaluate(model, TASK, chosen, ablation="zero", n=4)
    with pytest.raises(InvalidOptionError, match="reference"):
        evaluate(model, TASK, chosen, ablation="mean", n=4, reference=ids.float())
    assert model.training and all(not m._forward_hooks for m in model.modules())
