"""The CD-T propagation rules (Hsu et al. 2024), one function per layer type, on (rel, irrel) pairs.

Every rule keeps ``rel + irrel`` equal to what the layer computes on the total. The reference code's rules
(LayerNorm, biased linear maps, rel-only attention, GELU, the sign-conflict rule) are followed as
written, with two deliberate differences documented in docs/cdt.md: the norm epsilon is the model's own
(the reference hard-codes 1e-8), and the share of a bias the reference loses to its 1e-8 tolerance
(``b * tol / (|rel| + |irrel| + tol)``) goes to irrel, so the split is exact. RMSNorm, SwiGLU, RoPE and
grouped-query attention have no reference rule; ours are the natural extensions (see docs/cdt.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor

TOL = 1e-8  # the reference's tolerance in every magnitude-proportional split
Parts = tuple[Tensor, Tensor]  # (rel, irrel), same shape


def split_bias(rel: Tensor, irrel: Tensor, bias: Optional[Tensor]) -> Parts:
    """Add `bias` split elementwise by |rel| : |irrel| (rel's share as in the reference; irrel the rest)."""
    if bias is None:
        return rel, irrel
    bias = bias.to(rel.dtype)
    rel_bias = bias * rel.abs() / (rel.abs() + irrel.abs() + TOL)
    return rel + rel_bias, irrel + (bias - rel_bias)


def linear(parts: Parts, apply: Callable[[Tensor], Tensor], bias: Optional[Tensor],
           total: Optional[Tensor] = None) -> Parts:
    """A linear map `apply` (no bias) on each part, then the bias split by the mapped magnitudes.
    `total`: the map of the total, when known (then irrel's map is total - rel's: one matmul saved)."""
    rel, irrel = parts
    rel_t = apply(rel)
    return split_bias(rel_t, apply(irrel) if total is None else total - rel_t, bias)


def layer_norm(parts: Parts, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Parts:
    """Each part centred by its own mean, both divided by the total's standard deviation, scaled by the
    weight; the bias split by |rel| : |irrel| of the norm's input."""
    rel, irrel = parts
    scale = torch.sqrt((rel + irrel).var(-1, unbiased=False, keepdim=True) + eps)
    rel_out = (rel - rel.mean(-1, keepdim=True)) / scale
    irrel_out = (irrel - irrel.mean(-1, keepdim=True)) / scale
    if weight is not None:
        rel_out, irrel_out = rel_out * weight, irrel_out * weight
    if bias is None:
        return rel_out, irrel_out
    rel_bias = bias * rel.abs() / (rel.abs() + irrel.abs() + TOL)
    return rel_out + rel_bias, irrel_out + (bias - rel_bias)


def rms_norm(parts: Parts, weight: Optional[Tensor], eps: float) -> Parts:
    """(No reference rule.) Both parts divided by the total's root mean square, scaled by the weight:
    RMSNorm has no centring and no bias, so this is the LayerNorm rule without them."""
    rel, irrel = parts
    inverse = torch.rsqrt((rel + irrel).pow(2).mean(-1, keepdim=True) + eps)
    rel_out, irrel_out = rel * inverse, irrel * inverse
    if weight is not None:
        rel_out, irrel_out = rel_out * weight, irrel_out * weight
    return rel_out, irrel_out


def activation(parts: Parts, f: Callable[[Tensor], Tensor]) -> Parts:
    """An elementwise nonlinearity: irrel' = f(irrel), rel' = f(rel + irrel) - f(irrel)."""
    rel, irrel = parts
    irrel_out = f(irrel)
    return f(rel + irrel) - irrel_out, irrel_out


def gated(gate: Parts, up: Parts, f: Callable[[Tensor], Tensor]) -> Parts:
    """(No reference rule.) SwiGLU f(g) * u: irrel' = f(g_irrel) * u_irrel, rel' = f(g) * u - irrel'
    (the activation rule applied to the product, irrel being what the irrel inputs alone give)."""
    irrel_out = f(gate[1]) * up[1]
    return f(gate[0] + gate[1]) * (up[0] + up[1]) - irrel_out, irrel_out


def sign_conflict(parts: Parts) -> Parts:
    """Where rel and irrel have opposite signs, the larger in magnitude takes the sum and the other 0
    (the reference's `normalize_rel_irrel`, used in MLP models)."""
    rel, irrel = parts
    total = rel + irrel
    conflict = rel * irrel < 0
    rel_wins = conflict & (rel.abs() >= irrel.abs())
    irrel_wins = conflict & ~rel_wins
    rel_out = torch.where(rel_wins, total, rel).masked_fill_(irrel_wins, 0.0)
    irrel_out = torch.where(irrel_wins, total, irrel).masked_fill_(rel_wins, 0.0)
    return rel_out, irrel_out


MaybeParts = tuple[Tensor, Optional[Tensor]]  # irrel may be absent where the rule does not need it


def attention(q: MaybeParts, k: MaybeParts, v: MaybeParts, scale: float, mask: Optional[Tensor],
              total: Optional[Tensor] = None) -> Parts:
    """Attention from q/k/v parts ``[batch, head, pos, d_head]`` (k and v already expanded to one per query
    head). The total pattern P = softmax(q k^T * scale + mask); the rel pattern uses rel-only scores,
    softmax(q_rel k_rel^T * scale + mask), cross terms going to irrel (a query with no rel part gets a
    uniform rel pattern over the positions it may see). z_rel = P_rel v_rel, z_irrel = P v - z_rel.
    `mask`: True where a query may not look (``[pos, pos]``). `total`: P v when already known (it is the
    real z, the same for every source set; the irrel q/k/v are then unused). Returns z parts
    ``[batch, head, pos, d_head]``."""
    z_rel = attend(q[0], k[0], scale, mask) @ v[0]
    if total is None:
        total = attend(q[0] + q[1], k[0] + k[1], scale, mask) @ (v[0] + v[1])
    return z_rel, total - z_rel


def attend(q: Tensor, k: Tensor, scale: float, mask: Optional[Tensor]) -> Tensor:
    scores = q @ k.transpose(-1, -2) * scale
    if mask is None:
        return torch.softmax(scores, dim=-1)
    additive = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill(mask, float("-inf"))
    pattern = torch.softmax(scores + additive, dim=-1)
    if mask.all(-1).any():  # a query that may see nothing gets no update (its softmax is NaN)
        pattern = pattern.masked_fill(mask, 0.0)
    return pattern
