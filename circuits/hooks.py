"""Hook sites, from one table, and the one way the library attaches hooks.

`site(model, layer, kind)` spells a TransformerLens hook name and checks it against the model, so a model
that lacks a hook point fails loudly here instead of silently never firing. `attached` adds forward hooks
for the duration of a ``with`` block and checks that each one fired.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from circuits import _compat
from circuits.errors import HookNotFiredError, UnknownNameError

HookFn = Callable[..., Any]

SITES: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",  # residual stream entering the block
    "resid_mid": "blocks.{layer}.hook_resid_mid",  # the MLP branch's input (TL4: ln2's input, not the residual)
    "resid_post": "blocks.{layer}.hook_resid_post",  # leaving the block
    "attn_out": "blocks.{layer}.hook_attn_out",  # attention output added to the residual (all heads + bias)
    "mlp_out": "blocks.{layer}.hook_mlp_out",  # MLP output added to the residual
    "z": "blocks.{layer}.attn.hook_z",  # per-head output before W_O, [batch, pos, head, d_head]
    "pattern": "blocks.{layer}.attn.hook_pattern",  # [batch, head, query_pos, key_pos]
    "q": "blocks.{layer}.attn.hook_q",  # per-head projections, [batch, pos, head, d_head]
    "k": "blocks.{layer}.attn.hook_k",  # (per KV head with grouped-query attention)
    "v": "blocks.{layer}.attn.hook_v",
}


def site(model: Any, layer: int, kind: str) -> str:
    """The hook name of `kind` (a key of `SITES`) in block `layer`, checked against `model`."""
    if kind not in SITES:
        raise UnknownNameError("hook site kind", kind, list(SITES))
    return checked(model, SITES[kind].format(layer=layer))


def checked(model: Any, name: str) -> str:
    """`name` if `model` has that hook point; `UnknownNameError` listing some valid names otherwise."""
    if _compat.has_hook(model, name):
        return name
    raise UnknownNameError("hook point", name, _compat.hook_names(model)[:40] + ["..."])


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
        checked(model, name)
    wrapped = [(name, tracking(i, fn)) for i, (name, fn) in enumerate(fwd_hooks)]
    with _compat.forward_hooks(model, wrapped):
        yield
    missing = [fwd_hooks[i][0] for i in range(len(fwd_hooks)) if i not in fired]
    if must_fire and missing:
        raise HookNotFiredError(f"hooks attached but never fired: {missing}")
