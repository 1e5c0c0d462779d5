"""CD-T exactness: rel + irrel is the real activation, property-tested on random tiny models of both families
(LayerNorm + GELU with and without MLPs, learned positions, non-zero biases; RMSNorm + SwiGLU + RoPE + GQA),
against a plain forward of the bridge (``hook_resid_pre`` of every layer and the logits), with both parts
carried through every rule (``real_totals=False``); and the default fast path (totals from the real pass)
gives the same rel and irrel. Plus the rules on hand-made inputs, and the typed errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from circuits import hooks
from circuits.engines.cdt import rules
from circuits.engines.cdt import decompose
from circuits.errors import IncompatibleModelError, InvalidOptionError, UnknownNameError
from tests.cdt_models import native_bridge


def real_run(model, tokens):
    names = [hooks.site(model, layer, "resid_pre") for layer in range(model.cfg.n_layers)]
    cache = {}
    fwd = [(name, (lambda t, hook, name=name: cache.__setitem__(name, t.detach()))) for name in names]
    with torch.no_grad(), hooks.attached(model, fwd):
        logits = model(tokens)
    return logits, [cache[name] for name in names]


@st.composite
def cases(draw, family):
    n_layers = draw(st.integers(1, 3))
    n_heads = draw(st.sampled_from([2, 4]))
    d_head = draw(st.sampled_from([4, 8]))
    fields = dict(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_model=draw(st.sampled_from([16, 24])),
                  d_vocab=30, n_ctx=12, d_mlp=32)
    if family == "gpt":
        fields.update(normalization_type="LN", positional_embedding_type="standard", attn_only=draw(st.booleans()),
                      act_fn=draw(st.sampled_from(["gelu", "gelu_new"])))
    else:
        fields.update(normalization_type="RMS", positional_embedding_type="rotary", attn_only=False, gated_mlp=True,
                      act_fn="silu", n_key_value_heads=draw(st.sampled_from([k for k in (1, 2, 4) if n_heads % k == 0])))
    n_pos, n_batch = draw(st.integers(2, 8)), draw(st.integers(1, 2))
    head = st.tuples(st.integers(0, n_layers - 1), st.integers(0, n_heads - 1))
    source = st.one_of(head.map(lambda lh: f"L{lh[0]}H{lh[1]}"),
                       st.tuples(head, st.integers(0, n_pos - 1)).map(lambda x: (f"L{x[0][0]}H{x[0][1]}", x[1])))
    sources = draw(st.lists(st.lists(source, max_size=4), min_size=1, max_size=3))
    baseline = draw(st.sampled_from([None, "mean", "per_example"]))
    return fields, n_pos, n_batch, sources, baseline, draw(st.integers(0, 2**16))


def check_exact(fields, n_pos, n_batch, sources, baseline, seed):
    model = native_bridge(perturb=0.2, seed=seed, **fields)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(fields["d_vocab"], (n_batch, n_pos), generator=g)
    z_shape = (fields["n_layers"], n_pos, fields["n_heads"], fields["d_head"])
    values = None if baseline is None else torch.randn(((n_batch,) if baseline == "per_example" else ()) + z_shape,
                                                       generator=g)
    logits, resid = real_run(model, tokens)
    # Both parts through every rule (real_totals=False): exactness is then a property of the rules.
    ours = decompose(model, tokens, sources, values, real_totals=False)
    for layer in range(fields["n_layers"]):
        torch.testing.assert_close(ours.resid_rel[layer] + ours.resid_irrel[layer], resid[layer].expand_as(ours.resid_rel[layer]),
                                   atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.rel + ours.irrel, logits.expand_as(ours.rel), atol=1e-4, rtol=0)
    # The default (totals from the real pass, irrel = total - rel; exact by construction) gives the same parts.
    fast = decompose(model, tokens, sources, values)
    for name in ("rel", "irrel"):
        torch.testing.assert_close(getattr(fast, name), getattr(ours, name), atol=1e-4, rtol=0)
    for layer in range(fields["n_layers"]):
        torch.testing.assert_close(fast.resid_rel[layer], ours.resid_rel[layer], atol=1e-4, rtol=0)
        torch.testing.assert_close(fast.z_rel[layer], ours.z_rel[layer], atol=1e-4, rtol=0)


@settings(max_examples=6, deadline=None)
@given(cases("gpt"))
def test_rel_plus_irrel_is_exact_layernorm_gelu(case):
    check_exact(*case)


@settings(max_examples=6, deadline=None)
@given(cases("llama"))
def test_rel_plus_irrel_is_exact_rmsnorm_swiglu_rope_gqa(case):
    check_exact(*case)


def test_sources_set_z_and_nothing_else_is_rel():
    model = native_bridge(perturb=0.2, n_layers=2, n_heads=2, d_head=4, d_model=8, d_vocab=20, n_ctx=8,
                          attn_only=True, normalization_type="LN")
    tokens = torch.randint(20, (2, 5), generator=torch.Generator().manual_seed(0))
    out = decompose(model, tokens, [[], ["L1H0"], [("L0H1", 2)]])
    z = [out.z_rel[layer] + out.z_irrel[layer] for layer in range(2)]
    assert not out.rel[0].any() and not out.z_rel[1][0].any()  # no source: nothing is rel
    torch.testing.assert_close(out.z_rel[1][1, :, :, 0], z[1][1, :, :, 0])  # a source's whole z is rel
    assert not out.z_irrel[1][1, :, :, 0].any() and not out.z_rel[1][1, :, :, 1].any()
    assert not out.z_rel[0][1].any()  # below the source's layer: all irrel
    assert out.z_rel[0][2, :, 2, 1].abs().sum() > 0  # one position of one head
    assert not out.z_rel[0][2][:, [0, 1, 3, 4]].any() and not out.z_rel[0][2, :, 2, 0].any()


def test_attention_rule_by_hand():
    """A query with no rel part gets a uniform causal rel pattern; z_rel = P_rel v_rel, z_irrel = P v - z_rel."""
    q_rel, q_irrel = torch.zeros(1, 1, 3, 2), torch.tensor([[[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]]])
    k_rel, k_irrel = torch.tensor([[[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]]]), torch.zeros(1, 1, 3, 2)
    v_rel, v_irrel = torch.tensor([[[[3.0], [6.0], [9.0]]]]), torch.tensor([[[[1.0], [1.0], [1.0]]]])
    mask = torch.ones(3, 3, dtype=torch.bool).triu(1)
    z_rel, z_irrel = rules.attention((q_rel, q_irrel), (k_rel, k_irrel), (v_rel, v_irrel), 1.0, mask)
    assert torch.allclose(z_rel[0, 0, :, 0], torch.tensor([3.0, 4.5, 6.0]))  # uniform over 1, 2, 3 positions
    scores = torch.tensor([[1.0, 0, 0], [0, 0, 2.0], [1.0, 0, 1.0]]).masked_fill(mask, float("-inf"))
    total = torch.softmax(scores, -1) @ torch.tensor([4.0, 7.0, 10.0])
    assert torch.allclose(z_rel[0, 0, :, 0] + z_irrel[0, 0, :, 0], total)


def test_sign_conflict_and_bias_split_by_hand():
    rel, irrel = rules.sign_conflict((torch.tensor([2.0, -1.0, 1.0, -3.0]), torch.tensor([-1.0, 3.0, 2.0, 3.0])))
    assert rel.tolist() == [1.0, 0.0, 1.0, 0.0] and irrel.tolist() == [0.0, 2.0, 2.0, 0.0]
    rel, irrel = rules.split_bias(torch.tensor([3.0, 0.0]), torch.tensor([-1.0, 0.0]), torch.tensor([4.0, 5.0]))
    assert torch.allclose(rel, torch.tensor([6.0, 0.0])) and torch.allclose(irrel, torch.tensor([0.0, 5.0]))


def test_bad_input_is_refused_with_typed_errors(random_model):
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(UnknownNameError, match="L7H0"):
        decompose(random_model, tokens, [["L7H0"]])
    with pytest.raises(InvalidOptionError, match="position"):
        decompose(random_model, tokens, [[("L0H0", 9)]])
    with pytest.raises(InvalidOptionError, match="list of source sets"):
        decompose(random_model, tokens, ["L0H0"])
    with pytest.raises(InvalidOptionError, match="baseline has shape"):
        decompose(random_model, tokens, [["L0H0"]], torch.zeros(2, 4, 4))


@pytest.mark.parametrize("fields, rule", [
    (dict(attn_only=False, act_fn="relu"), "activation 'relu'"),
    (dict(attn_only=False, act_fn="silu", parallel_attn_mlp=True), "parallel attention"),
    (dict(attn_only=False, gated_mlp=True, act_fn="gelu"), "activation 'gelu' in a gated MLP"),
])
def test_models_without_a_rule_are_refused(fields, rule):
    model = native_bridge(n_layers=1, n_heads=2, d_head=4, d_model=8, d_vocab=10, n_ctx=8, d_mlp=16, **fields)
    with pytest.raises(IncompatibleModelError, match=rule):
        decompose(model, torch.zeros(1, 3, dtype=torch.long), [["L0H0"]])
