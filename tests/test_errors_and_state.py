"""Bad input gets typed errors naming the value; the model is left as it was found, even on error."""

from dataclasses import replace

import pytest
import torch

import circuits
import tasks
from circuits import forward, hooks
from circuits.errors import (HookNotFiredError, InvalidBatchError, InvalidOptionError, MetricError,
                             UnknownNameError)


def test_unknown_task_and_engine_list_valid_names(random_model, induction):
    with pytest.raises(UnknownNameError, match="'nope'.*induction"):
        tasks.get("nope")
    with pytest.raises(UnknownNameError, match="'patchy'.*activation_patching"):
        circuits.discover(random_model, induction, engine="patchy")
    with pytest.raises(InvalidOptionError, match="'sideways'"):
        circuits.discover(random_model, induction, direction="sideways")


class Broken:
    """The induction task with one thing wrong, to check each typed error."""

    def __init__(self, fault):
        self.task, self.fault, self.name = tasks.get("induction"), fault, f"broken-{fault}"

    def batch(self, model, n, seed):
        batch = self.task.batch(model, n, seed)
        if self.fault == "shape":
            return replace(batch, corrupted=batch.corrupted[:, :-1])
        if self.fault == "vocab":
            clean = batch.clean.clone()
            clean[0, 0] = 999
            return replace(batch, clean=clean)
        return batch

    def metric(self, logits, batch):
        values = self.task.metric(logits, batch)
        if self.fault == "nan":
            values = values.clone()
            values[0] = float("nan")
        if self.fault == "first-hook":
            raise RuntimeError("metric exploded")
        return values

    def default_model(self):
        return None


@pytest.mark.parametrize("fault, error, message", [
    ("shape", InvalidBatchError, r"clean \(4, 48\) and corrupted \(4, 47\)"),
    ("vocab", InvalidBatchError, "token 999, outside the vocabulary"),
    ("nan", MetricError, "non-finite"),
])
def test_bad_batches_and_metrics(fault, error, message, random_model):
    with pytest.raises(error, match=message):
        circuits.discover(random_model, Broken(fault), n=4)


def state(model):
    return ([m.training for m in model.modules()],
            {name: len(point.fwd_hooks) for name, point in model.hook_dict.items()})


@pytest.mark.parametrize("fault", [None, "nan", "first-hook"])
@pytest.mark.parametrize("training", [True, False])
def test_model_restored_after_discover_even_when_it_raises(fault, training, random_model):
    random_model.train(training)
    user_hook = lambda tensor, hook: tensor  # noqa: E731
    random_model.hook_dict["blocks.0.hook_resid_pre"].add_hook(user_hook)
    before = state(random_model)
    task = Broken(fault) if fault else tasks.get("induction")
    if fault:
        with pytest.raises((MetricError, RuntimeError)):
            circuits.discover(random_model, task, n=4)
    else:
        circuits.discover(random_model, task, n=4, per_position=True)
    assert state(random_model) == before  # modes of every module, and only the user's hook remains
    random_model.reset_hooks()


def test_attached_hooks_must_fire(random_model):
    x = torch.zeros(1, 5, dtype=torch.long)
    seen = []
    with hooks.attached(random_model, [(hooks.site(random_model, 1, "z"), lambda t, hook: seen.append(t.shape))]):
        random_model(x)
    assert seen == [torch.Size([1, 5, 4, 8])]
    # a hook on a block that the run skips never fires, and that is an error, not a silent no-op
    resid = forward.embed(random_model, x)
    with pytest.raises(HookNotFiredError, match="blocks.1.attn.hook_z"):
        with hooks.attached(random_model, [(hooks.site(random_model, 1, "z"), lambda t, hook: t)]):
            forward.run_blocks(random_model, resid, 0, 1)
    with pytest.raises(UnknownNameError, match="blocks.7.attn.hook_z"):
        hooks.site(random_model, 7, "z")


def test_attached_equals_the_bridges_own_hooks_and_leaves_only_the_users(random_model):
    """`hooks.attached` adds hooks to the bridge's registry points directly (`_compat.forward_hooks`, not
    ``model.hooks``, which rebuilds ``hook_dict`` on every call): the same activations reach the hooks under
    the same names, a replacement changes the output alike, and on exit (also on error) only hooks that were
    there before remain, nested contexts included."""
    x = torch.arange(6)[None] % random_model.cfg.d_vocab
    names = [hooks.site(random_model, layer, kind) for layer in (0, 1) for kind in ("z", "attn_out", "q")]

    def record(into):
        return lambda t, hook: into.append((hook.name, t.clone()))

    ours, theirs = [], []
    with hooks.attached(random_model, [(n, record(ours)) for n in names]):
        random_model(x)
    with random_model.hooks(fwd_hooks=[(n, record(theirs)) for n in names]):
        random_model(x)
    assert [name for name, _ in ours] == [name for name, _ in theirs]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(ours, theirs))

    zero = hooks.site(random_model, 0, "z")
    with hooks.attached(random_model, [(zero, lambda t, hook: torch.zeros_like(t))]):
        patched = random_model(x)
    with random_model.hooks(fwd_hooks=[(zero, lambda t, hook: torch.zeros_like(t))]):
        expected = random_model(x)
    assert torch.equal(patched, expected) and not torch.equal(patched, random_model(x))

    users = []
    random_model.hook_dict[zero].add_hook(lambda t, hook: users.append(1))
    count = lambda: sum(len(p.fwd_hooks) for p in circuits._compat.hook_points(random_model))  # noqa: E731
    before = count()
    with pytest.raises(RuntimeError, match="inner"):
        with hooks.attached(random_model, [(zero, lambda t, hook: t)]):
            with hooks.attached(random_model, [(names[1], lambda t, hook: t)]):
                assert count() == before + 2
                raise RuntimeError("inner")
    assert count() == before
    random_model(x)
    assert users == [1]  # the user's hook stayed and fires
    random_model.reset_hooks()
    # a point the bridge refuses (hook_result without use_attn_result) is refused alike, and nothing stays attached
    with pytest.raises(ValueError, match="use_attn_result"), random_model.hooks(
            fwd_hooks=[("blocks.0.attn.hook_result", lambda t, hook: t)]):
        pass
    with pytest.raises(ValueError, match="use_attn_result"), hooks.attached(
            random_model, [(names[0], lambda t, hook: t), ("blocks.0.attn.hook_result", lambda t, hook: t)]):
        pass
    assert count() == before - 1  # the user's hook, removed by reset_hooks above, and nothing else
