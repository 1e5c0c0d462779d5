"""Shared by the fact analyses: what each component writes at the read-out position, read through the final
RMSNorm, and runs with heads scaled.

Direct contributions: the final norm is ``w * x / s`` with ``s = sqrt(mean(x^2) + eps)`` of the *whole* final
residual ``x``; freezing ``s`` per prompt makes the logits a sum over the components that wrote ``x`` (embedding,
each head, each MLP), so a component ``c`` adds ``(c / s) @ (w * W_U)`` to the logits. "Centred" subtracts the
mean over the vocabulary (a shift every logit gets changes no probability).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits import forward, hooks
from circuits.errors import InvalidOptionError


@dataclass
class ReadOut:
    """Activations of one batch at each prompt's read-out position (all on the CPU)."""

    embed: Float[Tensor, "batch d_model"]
    heads: Float[Tensor, "layer head batch d_model"]  # each head's output, z @ W_O
    attn: Float[Tensor, "layer batch d_model"]  # attention output (heads + bias)
    mlp: Float[Tensor, "layer batch d_model"]
    final: Float[Tensor, "batch d_model"]  # residual entering the final norm
    scale: Float[Tensor, " batch"]  # the final norm's s
    resid_pre: Optional[list[Tensor]] = None  # full-sequence residual entering each block (for restarts)


def norm_weight(model: Any) -> Float[Tensor, " d_model"]:
    """The final RMSNorm's weight, read through the module itself: norm(1) = w / sqrt(1 + eps)."""
    ones = torch.ones(1, 1, model.cfg.d_model, device=forward.input_device(model))
    return (model.ln_final(ones)[0, 0] * (1 + model.cfg.eps) ** 0.5).detach().cpu()


def directions(model: Any, tokens: Int[Tensor, "..."], centred: bool = True) -> Float[Tensor, "... d_model"]:
    """``w * W_U[:, t]`` for each token t (minus its vocabulary mean when `centred`): dotted with ``c / s``
    it gives component c's direct (centred) logit of t."""
    w_u = model.W_U.detach().cpu()
    w = norm_weight(model)
    out = (w[:, None] * w_u[:, tokens.reshape(-1)]).T.reshape(*tokens.shape, -1)
    if centred:
        out = out - (w * w_u.mean(1))
    return out


@torch.no_grad()
def read_out(model: Any, tokens: Int[Tensor, "batch pos"], position: Int[Tensor, " batch"],
             keep_resid: bool = False) -> ReadOut:
    """One forward pass recording every component's write at the read-out position."""
    cfg = model.cfg
    rows = torch.arange(tokens.shape[0])
    z: dict[int, Tensor] = {}
    attn: dict[int, Tensor] = {}
    mlp: dict[int, Tensor] = {}
    resid: dict[int, Tensor] = {}

    def grab(store: dict, layer: int, full: bool = False):
        def hook(tensor: Tensor, hook: Any) -> None:
            store[layer] = tensor.detach().cpu() if full else tensor[rows, position].detach().cpu()
        return hook

    fwd = []
    for layer in range(cfg.n_layers):
        fwd += [(hooks.site(model, layer, "z"), grab(z, layer)), (hooks.site(model, layer, "attn_out"), grab(attn, layer)),
                (hooks.site(model, layer, "mlp_out"), grab(mlp, layer))]
        if keep_resid:
            fwd.append((hooks.site(model, layer, "resid_pre"), grab(resid, layer, full=True)))
    with hooks.attached(model, fwd):
        embedded = forward.embed(model, tokens)
        final = forward.run_blocks(model, embedded, 0)[rows, position].cpu()
    heads = torch.stack([einops.einsum(z[l], model.blocks[l].attn.W_O.detach().cpu(), "b h e, h e d -> h b d")
                         for l in range(cfg.n_layers)])
    scale = (final.pow(2).mean(-1) + cfg.eps).sqrt()
    return ReadOut(embed=embedded[rows, position].cpu(), heads=heads, attn=torch.stack([attn[l] for l in range(cfg.n_layers)]),
                   mlp=torch.stack([mlp[l] for l in range(cfg.n_layers)]), final=final, scale=scale,
                   resid_pre=[resid[l] for l in range(cfg.n_layers)] if keep_resid else None)


def direct(component: Float[Tensor, "... batch d_model"], scale: Float[Tensor, " batch"],
           direction: Float[Tensor, "batch d_model"]) -> Float[Tensor, "... batch"]:
    """Each prompt's direct logit contribution of `component` along its own `direction` row."""
    return ((component / scale[:, None]) * direction).sum(-1)


@torch.no_grad()
def scaled_top1(model: Any, readout: ReadOut, position: Int[Tensor, " batch"],
                conditions: Sequence[dict[tuple[int, int], float]], readout_only: bool,
                max_rows: int = 192) -> Int[Tensor, "condition batch"]:
    """Top-1 tokens with each condition's heads ``{(layer, head): alpha}`` multiplied by alpha (their ``hook_z``,
    i.e. the query head's own output under grouped-query attention), at every position or only at the
    read-out position. Runs restart from the first scaled layer on the cached residual; conditions are
    stacked along the batch (at most `max_rows` rows per pass)."""
    assert readout.resid_pre is not None, "read_out(..., keep_resid=True) keeps the residuals restarts need"
    if not all(conditions):
        raise InvalidOptionError(f"conditions={list(conditions)!r}; expected every condition to scale at least one head")
    # Passes never mix first layers, so each restarts as late as its conditions allow.
    order = sorted(range(len(conditions)), key=lambda i: min(l for l, _ in conditions[i]))
    n = position.shape[0]
    per_pass = max(1, max_rows // n)
    passes: list[list[dict[tuple[int, int], float]]] = []
    for i in order:
        first = min(l for l, _ in conditions[i])
        if passes and len(passes[-1]) < per_pass and min(l for l, _ in passes[-1][0]) == first:
            passes[-1].append(conditions[i])
        else:
            passes.append([conditions[i]])
    out = []
    for group in passes:
        layers = sorted({l for c in group for l, _ in c})
        fwd = []
        for layer in layers:
            factor = torch.ones(len(group) * n, model.cfg.n_heads)
            for i, c in enumerate(group):
                for (l, h), alpha in c.items():
                    if l == layer:
                        factor[i * n:(i + 1) * n, h] = alpha
            fwd.append((hooks.site(model, layer, "z"), _scaler(factor, position.repeat(len(group)), readout_only)))
        first = layers[0]
        resid = readout.resid_pre[first]
        stacked = resid.repeat(len(group), 1, 1).to(forward.input_device(model))
        with hooks.attached(model, fwd):
            logits = forward.run_from(model, stacked, first, position.repeat(len(group)))
        out.append(logits.argmax(-1).cpu().view(len(group), n))
    result = torch.empty(len(order), n, dtype=torch.long)
    result[torch.tensor(order)] = torch.cat(out)
    return result


def _scaler(factor: Tensor, position: Tensor, readout_only: bool):
    def hook(z: Tensor, hook: Any) -> Tensor:
        f = factor.to(z.device, z.dtype)
        if not readout_only:
            return z * f[:, None, :, None]
        z = z.clone()
        rows = torch.arange(z.shape[0], device=z.device)
        z[rows, position.to(z.device)] = z[rows, position.to(z.device)] * f[:, :, None]
        return z
    return hook


def rate(hits: Tensor) -> tuple[float, float]:
    """Mean of a boolean tensor over its last axis and its standard error sqrt(p(1-p)/n)."""
    p = hits.float().mean().item()
    n = hits.numel()
    return p, (p * (1 - p) / n) ** 0.5
