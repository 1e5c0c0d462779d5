"""Metrics on read-out logits ``[batch, d_vocab_out]``: one number per prompt, higher = more behaviour.

The functions take tensors; `named(name)` gives a task's metric by name, a function of ``(logits, batch)``:

| name | value per prompt | needs |
|---|---|---|
| ``logit_difference`` | logit(answer) − logit(foil) | ``batch.foil`` |
| ``log_probability`` | log p(answer) | |
| ``probability`` | p(answer) | |
| ``kl_divergence`` | −KL(p_clean ‖ p): 0 where the run predicts what the clean run does, below 0 elsewhere | ``batch.clean_logprobs`` |

Answers are one token id per prompt (``[batch]``); another shape is refused with a typed error before any
indexing. The normalised patching score lives with the engines' shared code (`circuits.engines.kit.Baseline`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.errors import InvalidBatchError, MultiTokenAnswerError, UnknownNameError

Metric = Callable[[Tensor, Any], Tensor]


def one_per_prompt(ids: Tensor, logits: Tensor, name: str = "answer") -> Tensor:
    """`ids` if it holds one token id per prompt (``[batch]``, integers inside the vocabulary); a typed error naming
    its shape or value otherwise (a multi-token answer is `MultiTokenAnswerError`)."""
    batch, vocab = logits.shape[0], logits.shape[-1]
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise InvalidBatchError(f"{name} has dtype {ids.dtype}; expected integer token ids, one per prompt")
    if ids.ndim == 2 and ids.shape[0] == batch and ids.shape[1] != 1:
        raise MultiTokenAnswerError(
            f"{name} holds {ids.shape[1]} tokens per prompt (shape {tuple(ids.shape)}); expected one token id per "
            f"prompt, shape ({batch},): the metric reads one logit per {name} (its first token is {name}[:, 0])")
    if tuple(ids.shape) not in ((batch,), (batch, 1)):
        raise InvalidBatchError(f"{name} has shape {tuple(ids.shape)}; expected one token id per prompt, shape "
                                f"({batch},), for read-out logits of shape {tuple(logits.shape)}")
    ids = ids.reshape(batch)
    if batch and (ids.min() < 0 or ids.max() >= vocab):
        bad = ids[(ids < 0) | (ids >= vocab)][0].item()
        raise InvalidBatchError(f"{name} holds token {bad}, outside the vocabulary [0, {vocab})")
    return ids


def _picked(values: Tensor, ids: Tensor) -> Tensor:
    return values.gather(1, ids.to(values.device)[:, None])[:, 0]


def logit_difference(logits: Float[Tensor, "batch vocab"], answer: Tensor, foil: Tensor) -> Float[Tensor, " batch"]:
    """logit(answer) - logit(foil)."""
    return _picked(logits, one_per_prompt(answer, logits)) - _picked(logits, one_per_prompt(foil, logits, "foil"))


def log_probability(logits: Float[Tensor, "batch vocab"], answer: Tensor) -> Float[Tensor, " batch"]:
    """log p(answer) under the read-out distribution."""
    return _picked(logits.log_softmax(-1), one_per_prompt(answer, logits))


def answer_probability(logits: Float[Tensor, "batch vocab"], answer: Tensor) -> Float[Tensor, " batch"]:
    """p(answer) under the read-out distribution."""
    return _picked(logits.softmax(-1), one_per_prompt(answer, logits))


def kl_divergence(logits: Float[Tensor, "batch vocab"],
                  clean_logprobs: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
    """−KL(p_clean ‖ p) of the read-out distribution `logits` from the clean run's (`clean_logprobs`, log-probs):
    0 where the run predicts what the clean run does, below 0 elsewhere (signed so that higher = more behaviour,
    as every metric here)."""
    clean_logprobs = clean_logprobs.to(logits.device)
    return -(clean_logprobs.exp() * (clean_logprobs - logits.log_softmax(-1))).sum(-1)


def negative_squared_error(prediction: Float[Tensor, " batch"], target: Float[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """-(prediction - target)^2: the MSE metric, signed so that higher is better."""
    return -(prediction - target) ** 2


@torch.no_grad()
def clean_logprobs(model: Any, batch: Any) -> Float[Tensor, "batch vocab"]:
    """The clean run's log-probabilities at each read-out position (what `kl_divergence` compares with), on CPU."""
    from circuits import forward

    return forward.logits(model, batch.clean, batch.position).float().log_softmax(-1).cpu()


def _logit_difference(logits: Tensor, batch: Any) -> Tensor:
    if batch.foil is None:
        raise InvalidBatchError("metric 'logit_difference' needs a foil (the competing answer) per prompt; this batch "
                                "has none: give each prompt a foil, or use 'log_probability'")
    return logit_difference(logits, batch.answer, batch.foil)


def _kl_divergence(logits: Tensor, batch: Any) -> Tensor:
    if batch.clean_logprobs is None:
        raise InvalidBatchError("metric 'kl_divergence' needs batch.clean_logprobs (the clean run's read-out "
                                "log-probabilities, circuits.metrics.clean_logprobs(model, batch)); this batch has "
                                "none")
    return kl_divergence(logits, batch.clean_logprobs)


NAMED: dict[str, Metric] = {
    "logit_difference": _logit_difference,
    "log_probability": lambda logits, batch: log_probability(logits, batch.answer),
    "probability": lambda logits, batch: answer_probability(logits, batch.answer),
    "kl_divergence": _kl_divergence,
}
NEEDS = {"logit_difference": "foil", "kl_divergence": "clean_logprobs"}  # the batch field each needs beyond answer


def named(name: str) -> Metric:
    """The metric `name` as a function of ``(logits, batch)``; `UnknownNameError` listing the names otherwise."""
    if name not in NAMED:
        raise UnknownNameError("metric", name, sorted(NAMED))
    return NAMED[name]
