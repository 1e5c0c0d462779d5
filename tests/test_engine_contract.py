"""The contract every registered engine keeps (see circuits/engines/base.py): it leaves the model as it
found it (modes, hooks, requires_grad), also when something raises inside a hook it attached; it puts
inputs on ``model.cfg.device``; it says in ``meta["score"]`` what its scores mean."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits import _compat, engines, models
from circuits._state import preserved
from tests.references import RandomTokens

TASK = RandomTokens(seq_len=8)
OPTIONS = {"path_patching": {"per_input": False}, "edge_attribution": {"steps": 2},  # engine -> options that keep
           "cdt": {"receiver_count": 2},  # the test fast
           "clamped_training": {"steps": 3, "eval_every": 1, "interaction_heads": 2, "progress": False}}


def small_model():
    return models.toy(n_layers=2, n_heads=2, d_model=16, d_vocab=32, n_ctx=16, seed=11)


def state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            {name: len(point.fwd_hooks) + len(point.bwd_hooks) for name, point in model.hook_dict.items()})


class Boom(Exception):
    pass


def hook_calls(engine_name: str) -> int:
    """How often a run of the engine reaches the last layer's z (a user hook there fires that often)."""
    model, calls = small_model(), []
    model.hook_dict["blocks.1.attn.hook_z"].add_hook(lambda tensor, hook: calls.append(1))
    engines.get(engine_name, **OPTIONS.get(engine_name, {})).run(model, TASK, n=2, seed=0)
    model.reset_hooks()
    return len(calls)


@pytest.mark.parametrize("engine_name", engines.names())
@pytest.mark.parametrize("fail_at", ["first", "second", "last"])
def test_model_restored_when_a_hook_raises_mid_run(engine_name, fail_at):
    """A user hook on the last layer's z raises on its first, second (where the engine calls the model more than
    once) or last call, while the engine's own hooks are attached: afterwards only the user's hook remains, and
    every mode and requires_grad flag is as it was."""
    total = hook_calls(engine_name)
    fail_at_call = {"first": 1, "second": min(2, total), "last": total}[fail_at]
    model = small_model()
    model.train()
    models.native_module(model).layers[0].attn.q.weight.requires_grad_(False)
    calls = []

    def exploding(tensor, hook):
        calls.append(1)
        if len(calls) == fail_at_call:
            raise Boom(f"call {fail_at_call}")
        return tensor

    model.hook_dict["blocks.1.attn.hook_z"].add_hook(exploding)
    before = state(model)
    engine = engines.get(engine_name, **OPTIONS.get(engine_name, {}))
    with pytest.raises(Boom):
        engine.run(model, TASK, n=2, seed=0)
    assert state(model) == before
    model.reset_hooks()


@pytest.mark.parametrize("engine_name", engines.names())
def test_engine_restores_the_model_itself(engine_name):
    """`engine.run` (not only `discover`) restores train mode and requires_grad after a normal run."""
    model = small_model()
    model.train()
    models.native_module(model).layers[1].attn.v.weight.requires_grad_(False)
    before = state(model)
    graph = engines.get(engine_name, **OPTIONS.get(engine_name, {})).run(model, TASK, n=2, seed=0)
    assert state(model) == before
    assert graph.meta["engine"] == engine_name and len(graph.meta["score"]) > 20


@pytest.mark.parametrize("engine_name", engines.names())
def test_engine_graphs_round_trip_through_json(engine_name, tmp_path):
    """What an engine really produces (tuples in its options, extras on edges) comes back equal."""
    graph = engines.get(engine_name, **OPTIONS.get(engine_name, {})).run(small_model(), TASK, n=2, seed=0)
    again = circuits.HeadGraph.from_json(graph.to_json(tmp_path / "graph.json"))
    assert again == graph and again.meta == graph.meta
    assert again.meta["options"] == graph.meta["options"]  # tuples stay tuples


def test_preserved_removes_hooks_and_restores_flags_on_error():
    model = small_model()
    before = state(model)
    with pytest.raises(Boom), preserved(model):
        model.hook_dict["blocks.0.attn.hook_z"].add_hook(lambda t, hook: t)  # no context manager to undo it
        model.hook_dict["blocks.0.attn.hook_z"].add_hook(lambda t, hook: t, dir="bwd")
        for p in model.parameters():
            p.requires_grad_(False)
        model.train()
        raise Boom
    assert state(model) == before


@pytest.mark.parametrize("engine_name", engines.names())
def test_inputs_go_to_cfg_device_not_the_first_parameter(engine_name):
    """A model spread over devices takes inputs on ``cfg.device``, wherever its first parameter lives. Here
    the first parameter is a decoy on the "meta" device: code that sends inputs to
    ``next(model.parameters()).device`` fails; code that follows ``cfg.device`` gives the usual graph."""
    model = small_model()
    engine = engines.get(engine_name, **OPTIONS.get(engine_name, {}))
    expected = engine.run(model, TASK, n=2, seed=0)
    models.native_module(model).register_parameter(
        "decoy", torch.nn.Parameter(torch.zeros(1, device="meta"), requires_grad=False))
    assert next(model.parameters()).device.type == "meta" and model.cfg.device == "cpu"
    assert engine.run(model, TASK, n=2, seed=0) == expected
    assert circuits.discover(model, TASK, engine=engine, n=2, seed=0) == expected


class WrongPlacement(Exception):
    pass


def placement_checked(model, monkeypatch):
    """A stub of a model spread over devices that refuses a wrong placement: every hook attached to `model`
    through ``_compat.forward_hooks`` (the one way `circuits.hooks.attached` attaches them) must hand back a
    tensor on the device, and with the dtype, of the activation it replaces. Counts the replacements it checked."""
    original, checked = _compat.forward_hooks, []

    def guarded(fn):
        def hook(tensor, hook):
            out = fn(tensor, hook=hook)
            if isinstance(out, torch.Tensor):
                if (out.device, out.dtype) != (tensor.device, tensor.dtype):
                    raise WrongPlacement(f"{hook.name}: a {tensor.dtype} activation on {tensor.device} "
                                         f"replaced by a {out.dtype} tensor on {out.device}")
                checked.append(hook.name)
            return out
        return hook

    def forward_hooks(target, fwd_hooks):
        if target is model:
            fwd_hooks = [(name, guarded(fn)) for name, fn in fwd_hooks]
        return original(target, fwd_hooks)

    monkeypatch.setattr(_compat, "forward_hooks", forward_hooks)
    return model, checked


def test_the_placement_stub_refuses_a_patch_on_another_device(monkeypatch):
    model, _ = placement_checked(small_model(), monkeypatch)
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(WrongPlacement, match="activation on cpu replaced by a torch.float32 tensor on meta"):
        with circuits.hooks.attached(model, [("blocks.0.hook_resid_pre", lambda t, hook: t.to("meta"))]):
            circuits.forward.logits(model, tokens)
    with pytest.raises(WrongPlacement, match="replaced by a torch.float64 tensor on cpu"):
        with circuits.hooks.attached(model, [("blocks.0.hook_resid_pre", lambda t, hook: t.double())]):
            circuits.forward.logits(model, tokens)


@pytest.mark.parametrize("engine_name", engines.names())
def test_patches_go_to_the_device_of_the_activation_they_replace(engine_name, monkeypatch):
    """Every replacement an engine makes through a hook passes the placement stub, and the graph is unchanged.
    (On this CPU-only machine every device is the CPU, so the stub fails only on a wrong device *or dtype*.
    Activation patching adds its patches to the cached residual (``deltas.to(mid.device)``) and CD-T recomputes
    the model: neither replaces an activation through a hook, so the stub checks nothing of theirs.)"""
    engine = engines.get(engine_name, **OPTIONS.get(engine_name, {}))
    expected = engine.run(small_model(), TASK, n=2, seed=0)
    model, checked = placement_checked(small_model(), monkeypatch)
    assert engine.run(model, TASK, n=2, seed=0) == expected
    if engine_name in ("path_patching", "edge_attribution"):
        assert checked, f"{engine_name} replaced no activation through a hook"
