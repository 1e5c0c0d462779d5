"""The one module that spells TransformerLens hook names.

Every name is checked against ``model.hook_dict`` before use, so a model that lacks a hook point fails
loudly here instead of silently never firing. `attached` adds hooks and checks that each one fired.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from circuits.errors import HookNotFiredError, UnknownNameError

HookFn = Callable[..., Any]


def _checked(model: Any, name: str) -> str:
    # The bridge's registry is a plain dict; `hook_dict` (which adds aliases) is rebuilt on every access,
    # which costs ~0.3 ms, so it is consulted only for names the registry lacks.
    registry = getattr(model, "_hook_registry", None)
    if (registry is not None and name in registry) or name in model.hook_dict:
        return name
    raise UnknownNameError("hook point", name, sorted(model.hook_dict)[:40] + ["..."])


def z(model: Any, layer: int) -> str:
    """Per-head attention output before W_O, ``[batch, pos, head, d_head]``."""
    return _checked(model, f"blocks.{layer}.attn.hook_z")


def pattern(model: Any, layer: int) -> str:
    """Attention pattern ``[batch, head, query_pos, key_pos]``."""
    return _checked(model, f"blocks.{layer}.attn.hook_pattern")


def resid_pre(model: Any, layer: int) -> str:
    """Residual stream entering block `layer`."""
    return _checked(model, f"blocks.{layer}.hook_resid_pre")


def attn_out(model: Any, layer: int) -> str:
    """Block `layer`'s attention output added to the residual stream (all heads and the bias)."""
    return _checked(model, f"blocks.{layer}.hook_attn_out")


def mlp_out(model: Any, layer: int) -> str:
    """Block `layer`'s MLP output added to the residual stream."""
    return _checked(model, f"blocks.{layer}.hook_mlp_out")


def q(model: Any, layer: int) -> str:
    return _checked(model, f"blocks.{layer}.attn.hook_q")


def k(model: Any, layer: int) -> str:
    return _checked(model, f"blocks.{layer}.attn.hook_k")


def v(model: Any, layer: int) -> str:
    return _checked(model, f"blocks.{layer}.attn.hook_v")


@contextmanager
def attached(model: Any, fwd_hooks: Sequence[tuple[str, HookFn]], *, must_fire: bool = True) -> Iterator[None]:
    """Attach forward hooks for the duration of the block; with `must_fire`, raise if one never ran.

    ``model.run_with_cache(x, fwd_hooks=...)`` silently ignores its hooks in TransformerLens 4; this
    context manager is the way hooks are added everywhere in the library.
    """
    fired: set[int] = set()

    def tracking(index: int, fn: HookFn) -> HookFn:
        def hook(tensor: Any, hook: Any) -> Any:
            fired.add(index)
            return fn(tensor, hook=hook)

        return hook

    for name, _ in fwd_hooks:
        _checked(model, name)
    wrapped = [(name, tracking(i, fn)) for i, (name, fn) in enumerate(fwd_hooks)]
    with model.hooks(fwd_hooks=wrapped):
        yield
    missing = [fwd_hooks[i][0] for i in range(len(fwd_hooks)) if i not in fired]
    if must_fire and missing:
        raise HookNotFiredError(f"hooks attached but never fired: {missing}")
