"""ICL regression: data, estimators, pattern measures on a hand-built model, errors, the analysis."""

from __future__ import annotations

import json
import math

import pytest
import torch

import circuits
import tasks
from circuits.errors import IncompatibleModelError, InvalidOptionError
from tasks import icl_regression_estimators as E
from tasks.icl_regression import ICLRegression, QueryReadout, model_config, prepare, tokens


def hand_built(omega: list[float], mu: list[float], d: int = 5, L: int = 40, x_diag=None, off=0.0, ov_x=0.0):
    """A model whose heads have W_KQ x-block = diag(x_diag or ω), plus `off` at (0, 1), and OV read-out
    (ov_x, 0, ..., 0, μ_h): every pattern measure is known exactly."""
    heads = len(omega)
    config = model_config(heads, d, L)
    module = prepare(circuits.models.new_native(config))
    attn = module.layers[0].attn
    size = d + 1
    with torch.no_grad():
        for w in (attn.q.weight, attn.k.weight, attn.v.weight, attn.o.weight):
            w.zero_()
        for h in range(heads):
            block = slice(h * size, (h + 1) * size)
            diagonal = torch.tensor(x_diag if x_diag is not None else [omega[h]] * d) * attn.scale
            attn.q.weight[h * size:h * size + d, :d] = torch.diag(diagonal)
            attn.q.weight[h * size, 1] = off * attn.scale
            attn.k.weight[block] = torch.eye(size)
            attn.v.weight[block] = torch.eye(size)
            attn.o.weight[d, h * size + d] = mu[h]
            attn.o.weight[d, h * size] = ov_x
    return prepare(circuits.models.wrap(module, config))


@pytest.fixture(scope="module")
def task():
    return ICLRegression()


# --- data --------------------------------------------------------------------------------------------
def test_sample_shapes_and_tokens(task):
    s = task.sample(7, torch.Generator().manual_seed(0))
    assert s.x.shape == (7, 40, 5) and s.y.shape == (7, 40) and s.x_q.shape == (7, 5)
    assert s.y_q.shape == (7,) and s.beta.shape == (7, 5)
    z = tokens(s.x, s.y, s.x_q)
    assert z.shape == (7, 41, 6)
    assert torch.equal(z[:, :40, :5], s.x) and torch.equal(z[:, :40, 5], s.y)
    assert torch.equal(z[:, 40, :5], s.x_q) and (z[:, 40, 5] == 0).all()


def test_beta_distribution_and_noise():
    task = ICLRegression(d=4, L=10, noise=0.25)
    s = task.sample(40000, torch.Generator().manual_seed(1))
    assert s.beta.mean().abs() < 0.01
    assert s.beta.var(0).sub(1 / 4).abs().max() < 0.01  # β ~ N(0, I/d): each coordinate has variance 1/d
    cov = s.beta.T @ s.beta / len(s.beta)
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 0.01
    residual = s.y - torch.einsum("nld,nd->nl", s.x, s.beta)
    assert abs(residual.var().item() - 0.25) < 0.01
    assert abs((s.y_q - (s.x_q * s.beta).sum(-1)).var().item() - 0.25) < 0.02
    exact = ICLRegression(noise=0.0).sample(5, torch.Generator().manual_seed(2))
    assert torch.allclose(exact.y, torch.einsum("nld,nd->nl", exact.x, exact.beta), atol=1e-6)


def test_sampling_is_seeded(task):
    a, b = (task.sample(3, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a.x, b.x) and torch.equal(a.y_q, b.y_q)


@pytest.mark.parametrize("corruption", ["resample", "shuffle"])
def test_batch(corruption):
    task = ICLRegression(corruption=corruption)
    model = hand_built([0.2, -0.2], [2.0, -2.0])
    batch = task.batch(model, n=16, seed=3)
    batch.validate(model)
    assert batch.clean.shape == (16, 41, 6) and (batch.position == 40).all()
    assert torch.equal(batch.clean[..., :5], batch.corrupted[..., :5])  # same xs and query
    assert not torch.equal(batch.clean[:, :40, 5], batch.corrupted[:, :40, 5])
    if corruption == "shuffle":
        assert torch.equal(batch.clean[:, :40, 5].sort(1).values, batch.corrupted[:, :40, 5].sort(1).values)
    logits = circuits.forward.logits(model, batch.clean, batch.position)
    assert logits.shape == (16, 1)
    assert torch.allclose(task.metric(logits, batch), -(logits[:, 0] - batch.answer) ** 2)


# --- estimators --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def problems(task):
    return task.sample(200_000, torch.Generator().manual_seed(7))


def mse(prediction, s):
    return ((prediction - s.y_q) ** 2).mean().item()


def squared_errors(estimate, step, s):
    return ((estimate(s.x, s.y, s.x_q, step) - s.y_q) ** 2).double()


@pytest.mark.parametrize("centred", [False, True])
def test_gd_step_sizes_are_the_empirical_least_squares_optimum(centred, problems):
    """A GD prediction is η·g with g = Σ_l y_l (x_l − c)ᵀ x_q, so the loss-minimising η on the sample is the
    least-squares fit Σ y_q g / Σ g², with a (heteroskedasticity-robust) standard error: the closed form lies
    within 4 of them, and the two closed forms (≈ 14 standard errors apart) are told apart."""
    s = problems
    x = s.x - s.x.mean(1, keepdim=True) if centred else s.x
    g = torch.einsum("nl,nld,nd->n", s.y, x, s.x_q).double()
    target = s.y_q.double()
    eta = (target * g).sum() / (g * g).sum()
    stderr = (g * g * (target - eta * g) ** 2).sum().sqrt() / (g * g).sum()
    closed = (E.debiased_gd_step_size if centred else E.gd_step_size)(5, 40, 0.1)
    other = (E.gd_step_size if centred else E.debiased_gd_step_size)(5, 40, 0.1)
    assert abs(eta - closed) < 4 * stderr < abs(closed - other)


def test_gd_losses_match_the_closed_forms(problems):
    """Each expected loss within 4 standard errors of its Monte Carlo mean, and the paired difference of the
    two estimators (same problems: a far smaller standard error) matches the difference of the closed forms,
    which differ by only 0.003."""
    d, L, noise = 5, 40, 0.1
    plain = squared_errors(E.gd, E.gd_step_size(d, L, noise), problems)
    debiased = squared_errors(E.debiased_gd, E.debiased_gd_step_size(d, L, noise), problems)
    for errors, loss in ((plain, E.gd_loss(d, L, noise)), (debiased, E.debiased_gd_loss(d, L, noise))):
        assert abs(errors.mean() - loss) < 4 * errors.std() / len(errors) ** 0.5
    difference = debiased - plain
    stderr = difference.std() / len(difference) ** 0.5
    expected = E.debiased_gd_loss(d, L, noise) - E.gd_loss(d, L, noise)
    assert abs(difference.mean() - expected) < 4 * stderr < expected
    for estimate, step in ((E.gd, E.gd_step_size), (E.debiased_gd, E.debiased_gd_step_size)):
        best = mse(estimate(problems.x, problems.y, problems.x_q, step(d, L, noise)), problems)
        for factor in (0.8, 1.25):
            assert mse(estimate(problems.x, problems.y, problems.x_q, factor * step(d, L, noise)), problems) > best


def test_ridge(problems):
    ridge = mse(E.ridge(problems.x, problems.y, problems.x_q, 0.5), problems)
    assert ridge < E.gd_loss(5, 40, 0.1) - 0.1
    assert mse(E.ridge(problems.x, problems.y, problems.x_q, 5.0), problems) > ridge  # λ = dσ² is Bayes-optimal
    exact = ICLRegression(noise=0.0, L=8).sample(20, torch.Generator().manual_seed(0))
    predicted = E.ridge(exact.x, exact.y, exact.x_q, 0.0)
    assert torch.allclose(predicted, (exact.x_q * exact.beta).sum(-1), atol=1e-4)


def test_debiased_gd_ignores_the_context_mean(problems):
    x, y, q = problems.x[:50], problems.y[:50], problems.x_q[:50]
    shifted = x + torch.randn(50, 1, 5)
    assert torch.allclose(E.debiased_gd(x, y, q, 0.1), E.debiased_gd(shifted, y, q, 0.1), atol=1e-4)


# --- pattern measures on hand-built models -------------------------------------------------------------
def test_hand_built_model_computes_the_softmax_estimator(task):
    omega, mu = torch.tensor([0.3, -0.1]), torch.tensor([1.5, -2.5])
    model = hand_built(omega.tolist(), mu.tolist())
    s = task.sample(32, torch.Generator().manual_seed(0))
    out = circuits.forward.logits(model, tokens(s.x, s.y, s.x_q), torch.full((32,), 40))[:, 0]
    # the query attends to the 40 context tokens only, and the read-out is the y coordinate
    assert torch.allclose(out, E.softmax_heads(s.x, s.y, s.x_q, omega, mu), atol=1e-5)


@pytest.mark.parametrize("heads", [1, 4])
def test_query_readout_matches_the_full_forward(task, heads):
    module = prepare(circuits.models.new_native(model_config(heads, seed=heads)))
    s = task.sample(8, torch.Generator().manual_seed(1))
    z = tokens(s.x, s.y, s.x_q)
    fast = QueryReadout(module)(inputs_embeds=z)
    assert fast.shape == (8, 1, 1)
    assert torch.allclose(fast, module(inputs_embeds=z)[:, -1:], atol=1e-5)


def test_prepare_fixes_the_readout_of_a_bridge_too():
    bridge = prepare(circuits.models.toy(model_config(2, d=3, L=7)))
    assert torch.equal(bridge.W_U[:, 0], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    with pytest.raises(IncompatibleModelError):
        prepare(circuits.models.toy(n_layers=1, n_heads=2, d_model=6, d_vocab=16, n_ctx=64))


def test_ideal_patterns_measure_exactly():
    p = E.patterns(hand_built([0.13, -0.13], [3.45, -3.45]))
    assert torch.allclose(p.omega, torch.tensor([0.13, -0.13]))
    assert torch.allclose(p.mu, torch.tensor([3.45, -3.45]))
    assert torch.allclose(p.diagonal_fraction(), torch.ones(2))
    assert torch.allclose(p.diagonal_cv(), torch.zeros(2), atol=1e-6)
    assert torch.allclose(p.last_entry_fraction(), torch.ones(2))
    assert p.zero_sum_ratio() == pytest.approx(0.0, abs=1e-7)
    assert torch.allclose(p.pair_products(), torch.full((2,), 0.13 * 3.45))


def test_imperfect_patterns_measure_exactly():
    diagonal = [0.1, 0.2, 0.3, 0.4, 0.5]
    p = E.patterns(hand_built([0.0], [3.0], x_diag=diagonal, off=0.5, ov_x=1.0))
    assert p.omega.item() == pytest.approx(0.3)
    assert p.diagonal_fraction().item() == pytest.approx(1.5 / 2.0)
    assert p.diagonal_cv().item() == pytest.approx(math.sqrt(0.02) / 0.3, rel=1e-5)
    assert p.last_entry_fraction().item() == pytest.approx(0.75)
    assert E.patterns(hand_built([0.1, 0.1], [3.0, -1.0])).zero_sum_ratio() == pytest.approx(2 / 3)


def test_activation_patching_on_continuous_inputs_gives_the_exact_scores(task):
    """One layer, no LayerNorm: the prediction is the sum of the heads' softmax estimators, so patching head h
    replaces its term computed on the corrupted ys by the one on the clean ys. The expected scores follow from
    `softmax_heads` (checked against the model above), not from the engine."""
    omega, mu = torch.tensor([0.3, -0.3]), torch.tensor([1.5, -1.5])
    graph = circuits.discover(hand_built(omega.tolist(), mu.tolist()), task, engine="activation_patching", n=64)
    batch = task.batch(hand_built(omega.tolist(), mu.tolist()), n=64, seed=0)
    x, x_q = batch.clean[:, :40, :5], batch.clean[:, 40, :5]
    y_clean, y_corrupted = batch.clean[:, :40, 5], batch.corrupted[:, :40, 5]

    def head(h, y):
        return E.softmax_heads(x, y, x_q, omega[h:h + 1], mu[h:h + 1])

    def metric(prediction):
        return (-(prediction - batch.answer) ** 2).mean()

    clean = head(0, y_clean) + head(1, y_clean)
    corrupted = head(0, y_corrupted) + head(1, y_corrupted)
    expected = [(metric(corrupted - head(h, y_corrupted) + head(h, y_clean)) - metric(corrupted))
                / (metric(clean) - metric(corrupted)) for h in range(2)]
    assert graph.matrix()[0].tolist() == pytest.approx([float(e) for e in expected], abs=1e-4)
    assert min(expected) > 0.05  # each head of the pair carries part of the prediction


# --- bad input ---------------------------------------------------------------------------------------
def test_token_model_is_refused(task):
    token_model = circuits.models.toy(n_layers=1, n_heads=2, d_model=6, d_vocab=16, n_ctx=64)
    with pytest.raises(IncompatibleModelError, match="d_vocab_out"):
        task.batch(token_model, n=4, seed=0)
    with pytest.raises(IncompatibleModelError):
        E.patterns(token_model)
    assert tasks.get("icl_regression").name == "icl_regression"


def test_d_or_L_that_do_not_fit_the_model():
    model = hand_built([0.1], [1.0])
    with pytest.raises(InvalidOptionError, match="d_model"):
        ICLRegression(d=4).batch(model, n=4, seed=0)
    with pytest.raises(InvalidOptionError, match="n_ctx"):
        ICLRegression(L=41).batch(model, n=4, seed=0)
    ICLRegression(L=20).batch(model, n=4, seed=0)  # a shorter context fits
    for bad in (dict(d=0), dict(L=0), dict(noise=-1.0), dict(corruption="swap")):
        with pytest.raises(InvalidOptionError):
            ICLRegression(**bad)
    with pytest.raises(InvalidOptionError):
        model_config(0)


# --- the analysis --------------------------------------------------------------------------------------
def test_analysis_quick(tmp_path, monkeypatch, capsys):
    from analyses import icl_regression

    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    summary = icl_regression.run(quick=True, out=tmp_path / "out")
    for figure in ("kq", "ov", "omega_mu", "loss_vs_heads", "patching"):
        assert (tmp_path / "out" / f"{figure}.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(saved["mse"]) == {"1", "2", "4"} and "activation_patching" in saved["patching"]
    assert saved["estimators"]["ridge"] < saved["estimators"]["one-step GD"]
    # Predicting 0 has error Var(y) = 1 + σ² = 1.1; after a few hundred steps the 2-head model (≈ 0.32) already
    # explains more than half of it.
    assert summary["mse"]["2"] < 0.55
    assert "MSE, 2 heads" in capsys.readouterr().out


@pytest.mark.slow
def test_paper_numbers(task):
    """The issue's targets on the default models (shipped; trained by `make models`, ~5 minutes each)."""
    two = task.default_model()
    assert task.validation_mse(two, n=32768) < 0.26
    assert task.validation_mse(task.model(1), n=32768) > 0.35
    p = E.patterns(two)
    assert p.zero_sum_ratio() < 0.05
    assert (p.diagonal_fraction() > 0.9).all() and (p.diagonal_cv() < 0.1).all()
    assert (p.last_entry_fraction() > 0.9).all()
    assert (p.omega[0] * p.omega[1] < 0) and (p.pair_products() > 0).all()
