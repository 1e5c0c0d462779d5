"""Clamps (circuits.clamps) against an independent reference: the same intervention written as TransformerLens
hooks on the bridge (hook_z, hook_pattern, hook_k, hook_attn_out), on tiny random models; brute-force loops for
the Match targets; gradients that stop exactly where a clamp fixes a value; typed errors before any training."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from circuits import clamps, hooks, models
from circuits.errors import IncompatibleModelError, InvalidBatchError, InvalidOptionError, UnknownNameError
from tests.references import zero_head

CONFIG = models.ToyConfig(n_layers=2, n_heads=3, d_model=12, d_vocab=10, n_ctx=9, seed=3)


def pair(seed: int = 3):
    """A bridge and a plain copy with the same weights."""
    bridge = models.toy(CONFIG.__class__(**{**CONFIG.__dict__, "seed": seed}))
    return bridge, models.native_copy(bridge)


def tokens(seed: int, n: int = 4, n_pos: int = 9) -> torch.Tensor:
    return torch.randint(CONFIG.d_vocab, (n, n_pos), generator=torch.Generator().manual_seed(seed))


def bridge_logits(bridge, x, fwd_hooks):
    with torch.no_grad(), hooks.attached(bridge, fwd_hooks):
        return bridge(x)


def clamped_logits(module, x, clamp_list):
    with torch.no_grad(), clamps.attached(module, clamp_list):
        return module(x)


def previous_token_pattern(n_pos, strength=1.0):
    fixed = strength * torch.diag(torch.ones(n_pos - 1), -1) + (1 - strength) * torch.eye(n_pos)
    fixed[0, 0] = 1.0
    return fixed


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 50), layer=st.integers(0, 1), head=st.integers(0, 2))
def test_ablate_equals_zeroing_hook_z_on_the_bridge(seed, layer, head):
    bridge, module = pair(seed)
    x = tokens(seed)
    expected = bridge_logits(bridge, x, [(hooks.site(bridge, layer, "z"), zero_head(head))])
    got = clamped_logits(module, x, [clamps.Ablate(f"L{layer}H{head}")])
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, clamped_logits(module, x, []), atol=1e-5)  # the clamp did something


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 50), head=st.integers(0, 2), strength=st.floats(0.0, 1.0))
def test_previous_token_equals_overwriting_hook_pattern(seed, head, strength):
    bridge, module = pair(seed)
    x = tokens(seed)

    def fix(pattern, hook):
        pattern = pattern.clone()
        pattern[:, head] = previous_token_pattern(x.shape[1], strength)
        return pattern

    expected = bridge_logits(bridge, x, [(hooks.site(bridge, 0, "pattern"), fix)])
    got = clamped_logits(module, x, [clamps.PreviousToken(f"L0H{head}", strength)])
    assert torch.allclose(got, expected, atol=1e-5)


def test_mean_ablation_replaces_z_by_its_batch_and_position_mean():
    bridge, module = pair()
    x = tokens(1)

    def mean_head(z, hook):
        z = z.clone()
        z[:, :, 1] = z[:, :, 1].mean(dim=(0, 1), keepdim=True)
        return z

    expected = bridge_logits(bridge, x, [(hooks.site(bridge, 1, "z"), mean_head)])
    assert torch.allclose(clamped_logits(module, x, [clamps.Ablate("L1H1", mode="mean")]), expected, atol=1e-5)


def test_match_targets_follow_a_literal_loop():
    x = torch.tensor([[1, 2, 3, 1, 2, 1, 4, 3, 2]])
    state = clamps.ClampState(inputs=x)
    fixed, keep = clamps.Match("L1H0").rows(state, 9, x.device)
    for i in range(9):
        targets = [j + 1 for j in range(i) if x[0, j] == x[0, i]]
        assert bool(keep[0, i]) == bool(targets)
        expected = torch.zeros(9)
        for t in targets:
            expected[t] = 1 / len(targets)
        if targets:
            assert torch.allclose(fixed[0, i], expected)


def test_match_sets_the_pattern_rows_with_an_earlier_occurrence_and_keeps_the_others():
    _, module = pair()
    x = tokens(5)
    captured = []
    handle = models.native_attention(module)[1].register_forward_hook(lambda m, a, out: captured.append(out[1]))
    clamped_logits(module, x, [clamps.Match("L1H2")])
    clamped_logits(module, x, [])
    handle.remove()
    clamped, free = captured
    fixed, keep = clamps.Match("L1H2").rows(clamps.ClampState(inputs=x), x.shape[1], x.device)
    assert keep.any() and (~keep).any()
    assert torch.allclose(clamped[:, 2][keep], fixed[keep])
    assert torch.allclose(clamped[:, 2][~keep], free[:, 2][~keep])
    assert torch.allclose(clamped[:, :2], free[:, :2])


def test_copy_equals_zeroed_z_plus_pattern_weighted_embeddings():
    bridge, module = pair()
    x = tokens(2)
    seen = {}

    def remember(name):
        def hook(t, hook):
            seen[name] = t
            return t
        return hook

    def add_copy(out, hook):
        return out + torch.einsum("nij,njd->nid", seen["pattern"][:, 0], seen["embedding"])

    expected = bridge_logits(bridge, x, [(hooks.site(bridge, 0, "resid_pre"), remember("embedding")),
                                         (hooks.site(bridge, 1, "pattern"), remember("pattern")),
                                         (hooks.site(bridge, 1, "z"), zero_head(0)),
                                         (hooks.site(bridge, 1, "attn_out"), add_copy)])
    assert torch.allclose(clamped_logits(module, x, [clamps.Copy("L1H0")]), expected, atol=1e-5)


def test_layer0_equals_silenced_layer0_and_shifted_layer1_keys():
    bridge, module = pair()
    x = tokens(4)
    shift = lambda k, hook: torch.cat([k[:, :1], k[:, :-1]], dim=1)  # noqa: E731
    expected = bridge_logits(bridge, x, [(hooks.site(bridge, 0, "attn_out"), lambda t, hook: torch.zeros_like(t)),
                                         (hooks.site(bridge, 1, "k"), shift)])
    assert torch.allclose(clamped_logits(module, x, [clamps.Layer0()]), expected, atol=1e-5)


def test_gradients_stop_only_where_the_pattern_is_fixed():
    _, module = pair()
    x = tokens(0)
    with clamps.attached(module, [clamps.PreviousToken("L0H1")]):
        module(x).logsumexp(-1).sum().backward()
    q = models.native_attention(module)[0].q.weight.grad.view(3, 4, -1)  # [head, d_head, d_model]
    v = models.native_attention(module)[0].v.weight.grad.view(3, 4, -1)
    assert q[1].abs().max() == 0 and q[0].abs().max() > 0 and q[2].abs().max() > 0
    assert v[1].abs().max() > 0  # the clamped head's values still train


def test_hooks_are_removed_afterwards_also_on_error():
    _, module = pair()
    x = tokens(0)
    before = module(x)
    with pytest.raises(RuntimeError), clamps.attached(module, [clamps.Ablate("L0H0"), clamps.Layer0()]):
        raise RuntimeError
    assert torch.equal(module(x), before)


@settings(max_examples=15, deadline=None)
@given(layer=st.integers(0, 4), head=st.integers(0, 5),
       kind=st.sampled_from([clamps.Ablate, clamps.PreviousToken, clamps.Match, clamps.Copy]))
def test_a_head_the_model_lacks_is_named_in_the_error(layer, head, kind):
    clamp = kind(f"L{layer}H{head}")
    x = tokens(0)
    if layer < CONFIG.n_layers and head < CONFIG.n_heads:
        clamps.check_all([clamp], CONFIG.bridge_config(), x)
        return
    with pytest.raises(UnknownNameError, match=f"L{layer}H{head}"):
        clamps.check_all([clamp], CONFIG.bridge_config(), x)


@settings(max_examples=10, deadline=None)
@given(n_pos=st.integers(0, 14), floats=st.booleans())
def test_a_pattern_that_does_not_fit_the_prompts_is_refused(n_pos, floats):
    cfg = CONFIG.bridge_config()
    x = torch.zeros(2, n_pos, cfg.d_model) if floats else torch.zeros(2, n_pos, dtype=torch.long)
    for clamp in (clamps.PreviousToken("L0H0"), clamps.Match("L1H0"), clamps.Layer0()):
        if 2 <= n_pos <= cfg.n_ctx:
            clamp.check(cfg, x)
        else:
            with pytest.raises(InvalidBatchError, match=f"pos={n_pos}"):
                clamp.check(cfg, x)
    with pytest.raises(InvalidBatchError, match="d_model=12"):
        clamps.PreviousToken("L0H0").check(cfg, torch.zeros(2, 4, 7))


def test_bad_options_and_models_are_refused():
    with pytest.raises(InvalidOptionError, match="1.5"):
        clamps.PreviousToken("L0H0", strength=1.5)
    with pytest.raises(InvalidOptionError, match="'median'"):
        clamps.Ablate("L0H0", mode="median")
    one_layer = models.ToyConfig(n_layers=1, n_heads=2, d_model=8, d_vocab=10, n_ctx=9).bridge_config()
    with pytest.raises(InvalidOptionError, match="n_layers=1"):
        clamps.Layer0().check(one_layer, tokens(0))
    with pytest.raises(InvalidOptionError, match="same head"):
        clamps.check_all([clamps.PreviousToken("L0H0"), clamps.Match("L0H0")], CONFIG.bridge_config(), tokens(0))
    with pytest.raises(InvalidOptionError, match="not a clamp"):
        clamps.check_all(["L0H0"], CONFIG.bridge_config(), tokens(0))
    bridge, _ = pair()
    with pytest.raises(IncompatibleModelError, match="plain native module"):
        with clamps.attached(models.native_module(bridge), [clamps.Ablate("L0H0")]):
            pass
