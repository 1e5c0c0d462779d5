"""The training loop: seeded, restores the mode, and trains with clamps (hooks) active."""

import pytest
import torch
import torch.nn.functional as F

from circuits import hooks, models, training
from circuits.errors import InvalidOptionError

CONFIG = models.ToyConfig(n_layers=1, n_heads=2, d_model=16, d_vocab=8, n_ctx=8, seed=0)


def sample(generator):
    tokens = torch.randint(0, 8, (16, 8), generator=generator)
    return tokens, tokens.roll(1, dims=1)  # predict the previous token: needs attention


def loss(logits, targets):
    return F.cross_entropy(logits[:, 1:].flatten(0, 1), targets[:, 1:].flatten())


def test_same_seed_same_weights_and_mode_restored():
    first, second = models.new_native(CONFIG), models.new_native(CONFIG)
    first.eval()
    history = training.train(first, sample, loss, steps=20, seed=3, progress=False,
                             evaluate=lambda m: {"one": 1.0}, eval_every=10)
    training.train(second, sample, loss, steps=20, seed=3, progress=False)
    assert not first.training
    assert [h["step"] for h in history] == [10, 20] and history[-1]["one"] == 1.0
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_clamped_training_keeps_the_clamp_on_every_step():
    """Clamp layer 0's attention to uniform during training: the hook fires on every step, gradients
    still flow to the other weights, and the clamped model cannot learn the previous-token task as well."""
    clamped, free = models.toy(CONFIG), models.toy(CONFIG)
    calls = []

    def uniform(pattern, hook):
        calls.append(1)
        causal = torch.ones_like(pattern).tril()
        return causal / causal.sum(-1, keepdim=True)

    clamped_history = training.train(clamped, sample, loss, steps=60, lr=1e-2, progress=False,
                                     hooks=[(hooks.site(clamped, 0, "pattern"), uniform)],
                                     evaluate=lambda m: {}, eval_every=60)
    free_history = training.train(free, sample, loss, steps=60, lr=1e-2, progress=False,
                                  evaluate=lambda m: {}, eval_every=60)
    assert len(calls) == 60
    assert clamped_history[-1]["loss"] > free_history[-1]["loss"] + 0.3
    assert all(not p.fwd_hooks for p in clamped.hook_dict.values())  # clamps removed afterwards


def test_hooks_need_a_bridge_and_steps_must_be_positive():
    with pytest.raises(InvalidOptionError, match="NativeModel"):
        training.train(models.new_native(CONFIG), sample, loss, steps=1, hooks=[("x", lambda t, hook: t)])
    with pytest.raises(InvalidOptionError, match="steps must be >= 1; got 0"):
        training.train(models.new_native(CONFIG), sample, loss, steps=0)
