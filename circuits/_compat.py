"""Every reach into TransformerLens 4 beyond its documented API, in one place, each with the reason.

If a TransformerLens release moves one of these, this is the only module to change.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# The native ("TransformerLensNative") architecture's pieces. `build_bridge_from_module` wraps a torch module
# we trained ourselves; the documented `boot_native` would build a fresh, untrained one.
from transformer_lens.model_bridge.sources.native import (  # noqa: F401 (re-exported)
    NativeAttention,
    NativeModel,
    build_bridge_from_module,
    initialize_native_model,
)


def hook_points(model: Any) -> list[Any]:
    """Every hook point of `model`, each once.

    `hook_dict` repeats points under alias names and is rebuilt on every access (~0.3 ms); the bridge's
    private `_hook_registry` is a plain dict that holds each point once. Plain HookedRootModule-style
    models (no registry) fall back to `hook_dict`.
    """
    registry = getattr(model, "_hook_registry", None)
    points = registry if registry is not None else getattr(model, "hook_dict", {})
    unique = {id(point): point for point in points.values()}
    return list(unique.values())


def has_hook(model: Any, name: str) -> bool:
    """Whether `model` has a hook point called `name` (canonical or alias), consulting the cheap registry
    first and the rebuilt-on-access `hook_dict` only for names (aliases) the registry lacks."""
    registry = getattr(model, "_hook_registry", None)
    return (registry is not None and name in registry) or name in model.hook_dict


@contextmanager
def forward_hooks(model: Any, fwd_hooks: list[tuple[str, Any]]) -> Iterator[None]:
    """``model.hooks(fwd_hooks=...)`` without its per-call rebuild of ``hook_dict`` and of the alias map (~0.3 ms
    on a toy bridge, more on large models; an engine's run attaches hooks several times). Each name is looked
    up in the bridge's ``_hook_registry``, checked as ``model.hooks`` checks it (a point the backend cannot fire,
    a gated point: both raise) and added to its point; on exit exactly those handles are removed. Falls back to
    ``model.hooks`` when a name is not in the registry or the bridge runs in compatibility mode (where hooks
    added under alias names are called with those names)."""
    registry = getattr(model, "_hook_registry", None)
    if (registry is None or getattr(model, "compatibility_mode", False)
            or any(name not in registry for name, _ in fwd_hooks)):
        with model.hooks(fwd_hooks=fwd_hooks):
            yield
        return
    added = []
    try:
        fireable = getattr(model, "_check_hook_fireable", None)  # model.hooks refuses what the backend cannot fire
        for name, fn in fwd_hooks:
            point = registry[name]
            if fireable is not None:
                fireable(name, point.name or name)
            model.check_hooks_to_add(point, name, fn, dir="fwd")
            added.append((point, point.add_hook(fn, dir="fwd")))
        yield
    finally:
        for point, handle in added:
            handle.hook.remove()
            point.fwd_hooks[:] = [existing for existing in point.fwd_hooks if existing is not handle]


def hook_names(model: Any) -> list[str]:
    return sorted(model.hook_dict)


def native_attention_modules(model: Any) -> list[Any]:
    """The native attention modules of a native torch module or of a bridge that wraps one (the bridge
    keeps the wrapped module inside its components, so `modules()` reaches it)."""
    return [module for module in model.modules() if isinstance(module, NativeAttention)]


def original(component: Any) -> Any:
    """The torch module a bridge component wraps (`original_component`, not part of the documented API),
    or the module itself when it is not a bridge component."""
    wrapped = getattr(component, "original_component", None)
    return component if wrapped is None else wrapped


def unembedding(model: Any) -> Any:
    """The unembedding linear layer of a bridge (its wrapped module) or of a native module (`head`)."""
    return original(model.unembed) if hasattr(model, "unembed") else model.head


def native_module(bridge: Any) -> Any:
    """The native torch module inside a bridge built by `build_bridge_from_module`."""
    return bridge.original_model


def is_wrapped(module: Any) -> bool:
    """Whether a native module's submodules have been replaced by bridge components (it was wrapped)."""
    return any(hasattr(m, "original_component") for m in module.modules())


def unwrapped_copy(model: Any) -> Any:
    """A plain `NativeModel` with the weights, ``requires_grad`` flags and causal masks of a toy bridge (or of a
    native module): training it skips the bridge's components (about 4x faster). The wrapped module's state
    dict names each tensor with ``._original_component`` segments (and repeats some under both paths);
    removing them gives the plain module's names."""
    native = model.original_model if hasattr(model, "original_model") else model
    if not isinstance(native, NativeModel):
        raise TypeError(f"not a toy native model: {type(native).__name__}")
    fresh = NativeModel(copy.deepcopy(native.cfg))
    plain = lambda name: name.replace("._original_component", "")  # noqa: E731
    state = {plain(k): v for k, v in native.state_dict().items()}
    fresh.load_state_dict({k: state[k] for k in fresh.state_dict()})
    flags = {plain(k): p.requires_grad for k, p in native.named_parameters()}
    for name, parameter in fresh.named_parameters():
        parameter.requires_grad_(flags.get(name, True))
    for source, target in zip(native_attention_modules(native), native_attention_modules(fresh)):
        target.causal_mask = source.causal_mask.detach().clone()
    device = next((p.device for p in native.parameters() if p.device.type != "meta"), torch.device("cpu"))
    return fresh.to(device)
