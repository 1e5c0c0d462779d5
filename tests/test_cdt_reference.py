"""CD-T parity with the reference code (adelaidehsu/CD_Circuit on TransformerLens 2).

tests/fixtures/cdt_reference.pt holds the reference's own rel/irrel logits and target-node z, computed by
tests/fixtures/make_cdt_reference.py in a side environment, for random GPT-2-style models (LayerNorm eps
1e-8, tanh GELU, learned positions, non-zero biases) with and without MLPs: single heads, head sets across
layers, single positions, with and without a mean baseline. The same weights are loaded into a
TransformerLens 4 native model and `decompose` must give the same numbers to 1e-4.
"""

from pathlib import Path

import pytest
import torch

from circuits.engines.cdt import decompose
from tests.cdt_models import load_tl2_weights, native_bridge

FIXTURE = torch.load(Path(__file__).parent / "fixtures" / "cdt_reference.pt", weights_only=True)


def our_sources(sets):
    return [[f"L{l}H{h}" if p is None else (f"L{l}H{h}", p) for l, h, p in s] for s in sets]


@pytest.fixture(scope="module", params=[0, 1], ids=["mlp", "attn_only"])
def reference(request):
    entry = FIXTURE["models"][request.param]
    c = entry["config"]
    model = native_bridge(n_layers=c["n_layers"], d_model=c["d_model"], n_heads=c["n_heads"], d_head=c["d_head"],
                          d_mlp=c["d_mlp"], d_vocab=c["d_vocab"], n_ctx=c["n_ctx"], attn_only=c["attn_only"],
                          act_fn="gelu_new", normalization_type="LN", eps=1e-8, positional_embedding_type="standard")
    load_tl2_weights(model, entry["state_dict"])
    return model, entry


def test_weights_loaded_give_the_reference_models_logits(reference):
    model, entry = reference
    with torch.no_grad():
        assert torch.allclose(model(entry["tokens"]), entry["logits"], atol=1e-5)


@pytest.mark.parametrize("real_totals", [True, False], ids=["fast", "every_rule"])
@pytest.mark.parametrize("with_mean", [False, True], ids=["whole_z", "mean_baseline"])
def test_decompose_equals_the_reference(reference, with_mean, real_totals):
    model, entry = reference
    case = next(c for c in entry["cases"] if c["mean"] == with_mean)
    ours = decompose(model, entry["tokens"], our_sources(FIXTURE["sets"]), entry["mean"] if with_mean else None,
                     real_totals=real_totals)
    assert ours.rel.abs().max() > 0.1  # the sources matter: the comparison is not of zeros
    torch.testing.assert_close(ours.rel, case["rel"], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.irrel, case["irrel"], atol=1e-4, rtol=0)
    for t, (layer, position, head) in enumerate(case["target_nodes"]):
        torch.testing.assert_close(ours.z_rel[layer][:, :, position, head], case["target_rel"][:, t], atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.z_irrel[layer][:, :, position, head], case["target_irrel"][:, t], atol=1e-4, rtol=0)
