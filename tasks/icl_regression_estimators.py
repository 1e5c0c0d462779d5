"""Closed-form in-context regression estimators and the weight-pattern measures of He et al. (2025).

Estimators (all read one regression context ``x [n, L, d]``, ``y [n, L]`` and a query ``x_q [n, d]``):

- one-step GD from zero, ``ŷ = η Σ_l y_l x_lᵀ x_q``, with the step size that minimises the expected loss
  for x ~ N(0, I_d), β ~ N(0, I_d/d), noise variance σ²:  η* = 1 / (L + d + 1 + dσ²);
- debiased GD, the same with the context's mean x̄ removed, ``ŷ = η Σ_l y_l (x_l - x̄)ᵀ x_q`` (what a
  (+ω, +μ)/(−ω, −μ) head pair computes to first order in ω): η* = 1 / (L + d + dσ²);
- ridge with λ = dσ² (the Bayes posterior mean for this prior).

Pattern measures act on a one-layer model's weights in the paper's coordinates: the effective score matrix
``W_KQ = W_Q W_Kᵀ / attn_scale`` (query coordinates × key coordinates) and the OV read-out vector
``u = W_V W_O W_U`` (what each head reads from a token to add to the prediction). A head then computes
``ŷ_h = Σ_l softmax_l(z_qᵀ W_KQ z_l) uᵀ z_l``; the paper's ω_h is the x-block diagonal of W_KQ, μ_h the
last entry of u.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuits import models
from circuits.errors import IncompatibleModelError

Contexts = Float[Tensor, "n L d"]
Targets = Float[Tensor, "n L"]
Queries = Float[Tensor, "n d"]


def gd_step_size(d: int, L: int, noise: float) -> float:
    """The loss-minimising step size of one GD step from zero (noise = σ², the noise variance)."""
    return 1.0 / (L + d + 1 + d * noise)


def debiased_gd_step_size(d: int, L: int, noise: float) -> float:
    """The loss-minimising step size of debiased GD (the centred x-y moment has L - 1 degrees of freedom)."""
    return 1.0 / (L + d + d * noise)


def gd_loss(d: int, L: int, noise: float) -> float:
    """Expected squared error of one-step GD at η*: 1 + σ² − L η*."""
    return 1.0 + noise - L * gd_step_size(d, L, noise)


def debiased_gd_loss(d: int, L: int, noise: float) -> float:
    """Expected squared error of debiased GD at η*: 1 + σ² − (L − 1) η*."""
    return 1.0 + noise - (L - 1) * debiased_gd_step_size(d, L, noise)


def gd(x: Contexts, y: Targets, x_q: Queries, step: float) -> Float[Tensor, " n"]:
    return step * torch.einsum("nl,nld,nd->n", y, x, x_q)


def debiased_gd(x: Contexts, y: Targets, x_q: Queries, step: float) -> Float[Tensor, " n"]:
    return step * torch.einsum("nl,nld,nd->n", y, x - x.mean(1, keepdim=True), x_q)


def ridge(x: Contexts, y: Targets, x_q: Queries, penalty: float) -> Float[Tensor, " n"]:
    """Ridge regression on the context, evaluated at the query: x_qᵀ (XᵀX + λI)⁻¹ Xᵀ y."""
    gram = x.transpose(1, 2) @ x + penalty * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    beta = torch.linalg.solve(gram, torch.einsum("nld,nl->nd", x, y))
    return (beta * x_q).sum(-1)


def softmax_heads(x: Contexts, y: Targets, x_q: Queries, omega: Tensor, mu: Tensor) -> Float[Tensor, " n"]:
    """The paper's reduced model: ŷ = Σ_h μ_h Σ_l softmax_l(ω_h x_lᵀ x_q) y_l."""
    scores = torch.einsum("nld,nd->nl", x, x_q)
    weights = torch.softmax(omega[:, None, None] * scores[None], dim=-1)
    return torch.einsum("h,hnl,nl->n", mu, weights, y)


# --- pattern measures ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadPatterns:
    """Per-head weights of a one-layer model in the paper's coordinates (d = d_model - 1).

    kq: ``[H, d+1, d+1]`` effective score matrix W_KQ (query coordinate, key coordinate);
    ov: ``[H, d+1]`` OV read-out vector u_h.
    """

    kq: Tensor
    ov: Tensor

    @property
    def d(self) -> int:
        return self.kq.shape[-1] - 1

    @property
    def x_block(self) -> Tensor:
        """``[H, d, d]``: W_KQ between the x coordinates (the query's y row, always 0 at the query, excluded)."""
        return self.kq[:, : self.d, : self.d]

    @property
    def omega(self) -> Tensor:
        """``[H]``: mean of the x-block diagonal (the paper's ω_h)."""
        return self.x_block.diagonal(dim1=1, dim2=2).mean(-1)

    @property
    def mu(self) -> Tensor:
        """``[H]``: last (y) entry of the OV read-out vector (the paper's μ_h)."""
        return self.ov[:, -1]

    def diagonal_fraction(self) -> Tensor:
        """``[H]``: Σ|diag| / Σ|entries| of the x-block (1 for a diagonal matrix)."""
        block = self.x_block.abs()
        return block.diagonal(dim1=1, dim2=2).sum(-1) / block.sum((-1, -2))

    def diagonal_cv(self) -> Tensor:
        """``[H]``: coefficient of variation std/|mean| of the x-block diagonal (0 for ω·I)."""
        diagonal = self.x_block.diagonal(dim1=1, dim2=2)
        return diagonal.std(-1, unbiased=False) / diagonal.mean(-1).abs()

    def last_entry_fraction(self) -> Tensor:
        """``[H]``: |u_h[d]| / Σ|u_h| (1 when the head reads only y)."""
        return self.ov[:, -1].abs() / self.ov.abs().sum(-1)

    def zero_sum_ratio(self) -> float:
        """|Σ_h μ_h| / max_h |μ_h| (0 for heads whose μ cancel)."""
        return (self.mu.sum().abs() / self.mu.abs().max()).item()

    def pair_products(self) -> Tensor:
        """``[H]``: ω_h μ_h per head (the paper's ω·μ ≈ 0.45 for each head of a ± pair)."""
        return self.omega * self.mu


def _attention_scale(model: Any) -> float:
    for module in models.native_attention(model):
        return float(module.scale)
    return math.sqrt(model.cfg.d_head)


def patterns(model: Any, layer: int = 0) -> HeadPatterns:
    """Effective W_KQ and OV read-out of every head of `layer` of a bridge with a scalar read-out."""
    if model.cfg.d_vocab_out != 1:
        raise IncompatibleModelError(f"pattern measures need a scalar read-out (d_vocab_out=1); the model has "
                                     f"d_vocab_out={model.cfg.d_vocab_out}")
    with torch.no_grad():
        w_q, w_k = model.W_Q[layer].float(), model.W_K[layer].float()  # [H, d_model, d_head]
        kq = w_q @ w_k.transpose(1, 2) / _attention_scale(model)
        ov = (model.W_V[layer].float() @ model.W_O[layer].float() @ model.W_U.float())[..., 0]
    return HeadPatterns(kq=kq.cpu(), ov=ov.cpu())
