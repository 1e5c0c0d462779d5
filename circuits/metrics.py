"""Metrics on read-out logits ``[batch, d_vocab_out]``: one number per prompt, higher = more behaviour.

The normalised patching score lives with the engines' shared code (`circuits.engines.kit.Baseline`).
"""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor


def logit_difference(logits: Float[Tensor, "batch vocab"], answer: Int[Tensor, " batch"],
                     foil: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """logit(answer) - logit(foil)."""
    return (logits.gather(1, answer[:, None]) - logits.gather(1, foil[:, None]))[:, 0]


def answer_probability(logits: Float[Tensor, "batch vocab"], answer: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    return logits.softmax(-1).gather(1, answer[:, None])[:, 0]


def negative_squared_error(prediction: Float[Tensor, " batch"], target: Float[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """-(prediction - target)^2: the MSE metric, signed so that higher is better."""
    return -(prediction - target) ** 2
