"""In-context n-grams (Akyürek et al. 2024): the match mask, the hard-wired n-gram attention layer, the
in-context n-gram back-off predictor and the n-gram head score of a model's attention.

Position j *matches* query i for order n when j <= i and the n-1 tokens before j equal the n-1 tokens ending
at i: ``tokens[j-1-s] == tokens[i-s]`` for s = 0..n-2 (order 1: every j <= i). Attending uniformly to the
matches and reading each one's token gives the in-context distribution of what followed the current
(n-1)-gram: an n-gram model counted over the prompt so far.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuits.errors import InvalidOptionError
from tasks.dfa import LETTERS


def check_order(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise InvalidOptionError(f"an n-gram order must be an integer >= 1; got {n!r}")


def match_mask(tokens: Int[Tensor, "batch pos"], n: int) -> Bool[Tensor, "batch query key"]:
    """``mask[b, i, j]``: key j follows an earlier occurrence of the (n-1)-gram that ends at query i."""
    check_order(n)
    batch, length = tokens.shape
    mask = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril().expand(batch, -1, -1).clone()
    for s in range(n - 1):
        equal = torch.zeros(batch, length, length, dtype=torch.bool, device=tokens.device)
        equal[:, s:, s + 1:] = tokens[:, :length - s, None] == tokens[:, None, :length - s - 1]
        mask &= equal
    return mask


class NGramAttention(torch.nn.Module):
    """The paper's hard-wired n-gram head: each position attends uniformly to the positions that follow an
    earlier occurrence of its current (n-1)-gram (rows normalised; a row with no match outputs zeros).

    ``forward(tokens [batch, pos], values [batch, pos, d]) -> [batch, pos, d]``. With one-hot tokens as
    values the output is the in-context distribution of the token following the current (n-1)-gram.
    """

    def __init__(self, n: int):
        super().__init__()
        check_order(n)
        self.n = n

    def pattern(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch query key"]:
        mask = match_mask(tokens, self.n).float()
        return mask / mask.sum(-1, keepdim=True).clamp(min=1.0)

    def forward(self, tokens: Int[Tensor, "batch pos"],
                values: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos d"]:
        if values.shape[:2] != tokens.shape:
            raise InvalidOptionError(f"values {tuple(values.shape)} must be [batch, pos, d] with [batch, pos] = "
                                     f"tokens {tuple(tokens.shape)}")
        return torch.einsum("bij,bjd->bid", self.pattern(tokens).to(values.dtype), values)

    def extra_repr(self) -> str:
        return f"n={self.n}"


def ngram_predictor(tokens: Int[Tensor, "batch pos"], n: int, vocab: int,
                    letters: int = LETTERS) -> Float[Tensor, "batch pos vocab"]:
    """The in-context n-gram back-off predictor of the token after each position.

    Counts, over the prompt up to and including position i, which letters followed the current (n-1)-gram;
    with no such letter it backs off to order n-1, ..., 1 (the letter frequencies so far), and to uniform over
    the letters before any. Only letters are predicted (separators and padding may appear in the context).
    """
    check_order(n)
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab):
        bad = tokens[(tokens < 0) | (tokens >= vocab)][0].item()
        raise InvalidOptionError(f"token {bad} is outside the vocabulary [0, {vocab})")
    one_hot = torch.nn.functional.one_hot(tokens, vocab).float()
    one_hot[..., letters:] = 0.0
    prediction = torch.zeros(*tokens.shape, vocab)
    prediction[..., :letters] = 1.0 / letters
    for order in range(1, n + 1):  # higher orders overwrite lower ones where they have counts
        counts = torch.einsum("bij,bjd->bid", match_mask(tokens, order).float(), one_hot)
        total = counts.sum(-1, keepdim=True)
        prediction = torch.where(total > 0, counts / total.clamp(min=1.0), prediction)
    return prediction


def head_scores(pattern: Float[Tensor, "batch head query key"], tokens: Int[Tensor, "batch pos"], n: int,
                queries: Bool[Tensor, "batch pos"]) -> tuple[Float[Tensor, " head"], float]:
    """Each head's n-gram score: its attention mass on the query's matches (`match_mask`), averaged over the
    `queries` that have at least one match; and the same mass under uniform causal attention (the baseline)."""
    mask = match_mask(tokens, n)
    length = tokens.shape[1]
    counted = queries & mask.any(-1)
    if not counted.any():
        raise InvalidOptionError(f"no query position has an earlier {n - 1}-gram match; cannot score heads")
    mass = (pattern * mask[:, None].to(pattern.dtype)).sum(-1)  # [batch, head, query]
    scores = mass.permute(1, 0, 2)[:, counted].mean(-1)
    uniform = mask.sum(-1).float() / torch.arange(1, length + 1, device=tokens.device)
    return scores, uniform[counted].mean().item()
