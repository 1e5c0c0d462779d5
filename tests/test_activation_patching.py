"""Activation patching: parity with TransformerLens, exact micro-model numbers, properties."""

from dataclasses import replace

import einops
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import circuits
from circuits import forward
from circuits.engines import ActivationPatching
from circuits import hooks
from circuits.errors import IncompatibleModelError, UndefinedScoreError
from circuits.models import ToyConfig, toy
from tests.references import tl_metric, tl_patched


MODELS = {
    "attn-only LN": ToyConfig(n_layers=3, n_heads=4, d_model=32, seed=3),
    "MLP + LN": ToyConfig(n_layers=2, n_heads=4, d_model=32, attn_only=False, d_mlp=64, seed=4),
    "rotary RMS": ToyConfig(n_layers=2, n_heads=4, d_model=32, positional="rotary", normalization="RMS", seed=5),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_matches_transformer_lens_patching(name, induction):
    model = toy(MODELS[name])
    batch = induction.batch(model, n=6, seed=0)
    ours, _ = ActivationPatching().measure(model, induction, batch).values
    theirs = tl_patched(model, induction, batch)
    assert (ours - theirs).abs().max() <= 1e-4


def test_normalised_scores_match_transformer_lens(induction, induction_model):
    """Normalised with clean and corrupted metrics from plain ``model(tokens)`` runs, not the engine's own."""
    batch = induction.batch(induction_model, n=16, seed=0)
    graph = circuits.discover(induction_model, induction, n=16, seed=0)
    clean = tl_metric(induction_model, induction, batch, batch.clean)
    corrupted = tl_metric(induction_model, induction, batch, batch.corrupted)
    assert graph.meta["metric_clean"] == pytest.approx(clean, abs=1e-4)
    assert graph.meta["metric_corrupted"] == pytest.approx(corrupted, abs=1e-4)
    theirs = (tl_patched(induction_model, induction, batch) - corrupted) / (clean - corrupted)
    assert (graph.matrix() - theirs).abs().max() <= 1e-4


@pytest.mark.parametrize("memory_mb", [256.0, 0.05])  # all pairs of a layer in one pass; ~3 copies per pass
def test_per_position_matches_transformer_lens(memory_mb, induction, random_model):
    batch = induction.batch(random_model, n=4, seed=2)
    engine = ActivationPatching(per_position=True, memory_mb=memory_mb)
    _, ours = engine.measure(random_model, induction, batch).values
    theirs = tl_patched(random_model, induction, batch, per_position=True)  # [layer, pos, head]
    kept = int(batch.position.max()) + 1  # we drop positions after the last read-out (causal model)
    assert ours.shape == (2, 4, kept)
    assert (ours - theirs[:, :kept].transpose(1, 2)).abs().max() <= 1e-4
    with torch.no_grad():  # patching after the read-out changes nothing
        unpatched = induction.metric(forward.logits(random_model, batch.corrupted, batch.position), batch).mean()
    assert torch.allclose(theirs[:, kept:], unpatched, atol=1e-5)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_position_scores_in_the_graph_are_normalised_like_the_heads(direction, induction, random_model):
    """The graph's per-position node attribute, against TransformerLens's per-position patching normalised by
    hand (noising: the clean run with corrupted values patched in, TL on the swapped batch)."""
    batch = induction.batch(random_model, n=4, seed=2)
    graph = circuits.discover(random_model, induction, n=4, seed=2, per_position=True, direction=direction)
    clean = tl_metric(random_model, induction, batch, batch.clean)
    corrupted = tl_metric(random_model, induction, batch, batch.corrupted)
    if direction == "denoising":
        expected = (tl_patched(random_model, induction, batch, per_position=True) - corrupted) / (clean - corrupted)
    else:
        expected = (clean - tl_patched(random_model, induction, batch.swapped(), per_position=True)) / (clean - corrupted)
    kept = int(batch.position.max()) + 1
    for layer in range(2):
        for head in range(4):
            ours = torch.tensor(graph.nx.nodes[f"L{layer}H{head}"]["position_scores"])
            assert torch.allclose(ours, expected[layer, :kept, head], atol=1e-3)
    assert graph.meta["n"] == 4 and graph.meta["seed"] == 2


def test_defaults_are_32_prompts_and_seed_0(induction, random_model):
    graph = ActivationPatching().run(random_model, induction)
    assert (graph.meta["n"], graph.meta["seed"]) == (32, 0)
    assert graph == circuits.discover(random_model, induction, n=32, seed=0)


def test_noising_is_denoising_with_roles_swapped(induction, random_model):
    batch = induction.batch(random_model, n=6, seed=1)
    noising, _ = ActivationPatching(direction="noising").measure(random_model, induction, batch).values
    swapped = tl_patched(random_model, induction, batch.swapped())  # clean run, corrupted values patched in
    assert (noising - swapped).abs().max() <= 1e-4


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_exact_direct_effects_on_linear_micro_model(direction, induction):
    """One attention layer, no LayerNorm: logits are linear in head outputs (patching z leaves the patterns
    alone), so each head's score is its own direct effect (z_clean - z_corrupted) W_O W_U over the gap, in
    both directions: denoising (m_corrupted + effect - m_corrupted) / gap, noising (m_clean - (m_clean - effect)) / gap.
    A sign error in either branch, or clean and corrupted swapped, gives other numbers."""
    model = toy(ToyConfig(n_layers=1, n_heads=3, d_model=24, normalization=None, seed=7))
    batch = induction.batch(model, n=5, seed=3)
    rows = torch.arange(batch.size)
    with torch.no_grad():
        _, clean = model.run_with_cache(batch.clean)
        _, corrupted = model.run_with_cache(batch.corrupted)
        z_change = (clean["blocks.0.attn.hook_z"] - corrupted["blocks.0.attn.hook_z"])[rows, batch.position]
        logit_change = einops.einsum(z_change, model.W_O[0], model.W_U, "b h d, h d m, m v -> h b v")
        direct = (logit_change.gather(2, batch.answer[None, :, None].expand(3, -1, 1))
                  - logit_change.gather(2, batch.foil[None, :, None].expand(3, -1, 1)))[..., 0].mean(1)
    m_clean = tl_metric(model, induction, batch, batch.clean)
    m_corrupted = tl_metric(model, induction, batch, batch.corrupted)
    expected = direct / (m_clean - m_corrupted)
    assert expected.abs().min() > 0.05 and len({round(float(e), 3) for e in expected}) == 3  # distinct, non-trivial
    graph = circuits.discover(model, induction, n=5, seed=3, direction=direction)
    assert torch.allclose(graph.matrix()[0], expected, atol=1e-5)
    assert graph.nx.edges["L0H1", "logits"]["score"] == pytest.approx(float(expected[1]), abs=1e-5)
    assert graph.meta["metric_clean"] == pytest.approx(m_clean, abs=1e-5)
    assert graph.meta["metric_corrupted"] == pytest.approx(m_corrupted, abs=1e-5)


def test_chunking_does_not_change_results(induction, random_model):
    batch = induction.batch(random_model, n=4, seed=0)
    one_per_pass = ActivationPatching(memory_mb=1e-6).measure(random_model, induction, batch).values[0]
    all_at_once = ActivationPatching(memory_mb=1e4).measure(random_model, induction, batch).values[0]
    assert torch.allclose(one_per_pass, all_at_once, atol=1e-5)
    assert torch.allclose(one_per_pass, tl_patched(random_model, induction, batch), atol=1e-4)  # and both are right


@pytest.mark.parametrize("memory_mb, expected", [(256.0, [1, 1, 1]), (1e-6, [1, 1 + 4, 1 + 8])],
                         ids=["one_fused_pass", "one_copy_per_pass"])
def test_layers_below_the_patched_one_are_not_run_again(induction, memory_mb, expected):
    """Counted at hook_attn_out (hook_resid_pre of block 0 also fires while embedding). When every copy fits the
    budget, the whole measurement is one pass: every block's attention runs once, the patched copies joining the
    stack after their layer. With one copy per pass, layer l's attention runs once in the caching pass, then once
    per patched pass of each head below it: never for patches at or above it."""
    model = toy(ToyConfig(n_layers=3, n_heads=4, d_model=32, seed=3))
    calls = [0, 0, 0]
    for layer in range(3):
        model.hook_dict[hooks.site(model, layer, "attn_out")].add_hook(
            lambda t, hook, layer=layer: calls.__setitem__(layer, calls[layer] + 1))
    ActivationPatching(memory_mb=memory_mb).measure(model, induction, induction.batch(model, n=2, seed=0)).values
    model.reset_hooks()
    assert calls == expected


def test_fused_pass_equals_layer_by_layer_passes(induction):
    """The one-pass measurement (every copy fits) gives the layer-by-layer numbers, MLPs included, both directions."""
    model = toy(ToyConfig(n_layers=3, n_heads=4, d_model=32, attn_only=False, d_mlp=64, seed=5))
    batch = induction.batch(model, n=3, seed=1)
    for direction in ("denoising", "noising"):
        fused = ActivationPatching(direction=direction).measure(model, induction, batch)
        layered = ActivationPatching(direction=direction, memory_mb=1e-6).measure(model, induction, batch)
        assert torch.allclose(fused.values.heads, layered.values.heads, atol=1e-5)
        assert (fused.clean, fused.corrupted) == pytest.approx((layered.clean, layered.corrupted), abs=1e-5)
    assert torch.allclose(ActivationPatching().measure(model, induction, batch).values.heads,
                          tl_patched(model, induction, batch), atol=1e-4)


def test_parallel_attention_and_mlp_blocks_are_refused(induction):
    model = toy(ToyConfig(n_layers=1, n_heads=2, d_model=16, attn_only=False, d_mlp=32))
    model.cfg.parallel_attn_mlp = True
    with pytest.raises(IncompatibleModelError, match="parallel"):
        circuits.discover(model, induction, n=2)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), direction=st.sampled_from(["denoising", "noising"]))
def test_identical_prompts_change_nothing(seed, direction, induction):
    """clean == corrupted: every patch leaves the metric where it was (all effects 0, so all scores
    would be 0), and the normalised score, 0/0, is refused with a typed error."""
    model = toy(n_layers=2, n_heads=2, d_model=16, seed=seed % 7)
    batch = induction.batch(model, n=3, seed=seed)
    same = replace(batch, corrupted=batch.clean)
    patched, per_position = ActivationPatching(direction=direction, per_position=True).measure(
        model, induction, same).values
    with torch.no_grad():
        unpatched = induction.metric(forward.logits(model, same.clean, same.position), same).mean()
    assert torch.allclose(patched, unpatched.expand_as(patched), atol=1e-5)
    assert torch.allclose(per_position, unpatched.expand_as(per_position), atol=1e-5)
    with pytest.raises(UndefinedScoreError, match="no gap"):
        circuits.discover(model, AlwaysSame(induction), n=3, seed=seed)


class AlwaysSame:
    """The induction task with corrupted prompts equal to the clean ones."""

    def __init__(self, task):
        self.task, self.name = task, "same"

    def batch(self, model, n, seed):
        batch = self.task.batch(model, n, seed)
        return replace(batch, corrupted=batch.clean)

    def metric(self, logits, batch):
        return self.task.metric(logits, batch)

    def default_model(self):
        return self.task.default_model()


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5))
def test_same_seed_same_graph(seed, n, induction):
    model = toy(n_layers=2, n_heads=2, d_model=16, seed=3)
    first = circuits.discover(model, induction, n=n, seed=seed)
    second = circuits.discover(model, induction, n=n, seed=seed)
    assert first == second
    batch = induction.batch(model, n=n, seed=seed)  # and it is the graph of this seed's prompts
    assert torch.allclose(ActivationPatching().measure(model, induction, batch).values[0],
                          tl_patched(model, induction, batch), atol=1e-4)
