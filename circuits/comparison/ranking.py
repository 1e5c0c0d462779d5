"""Rankings of heads and agreement between rankings: tie-aware Spearman, top-k Jaccard.

Heads are ranked by the absolute value of their score (a head that hurts the behaviour matters as much as one
that helps); heads without a score (not measured, or NaN) rank after every scored head, in layer-then-head order.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Union

import numpy as np

from circuits.errors import InvalidOptionError
from circuits.graph import HeadGraph
from circuits.nodes import all_heads

Numbers = Union[Sequence[Union[int, float]], np.ndarray]


def ranks(values: Numbers) -> np.ndarray:
    """0-based ranks, ascending, with ties given the mean of the ranks they share (as Spearman's rho needs)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(a: Numbers, b: Numbers) -> float:
    """Spearman's rank correlation with ties averaged: Pearson's r of the two rank vectors. NaN when either
    side is constant or has fewer than two values (the correlation is undefined there)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise InvalidOptionError(f"spearman needs two sequences of the same length; got {len(a)} and {len(b)}")
    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    if np.all(ra == ra[0]) or np.all(rb == rb[0]):
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def jaccard(a: Collection[object], b: Collection[object]) -> float:
    """|A ∩ B| / |A ∪ B| of two sets (1.0 for two empty sets: they are the same set)."""
    a, b = set(a), set(b)
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


def ranked_heads(graph: HeadGraph) -> list[str]:
    """Every head of the graph's model, best first: by |score| descending, unscored heads last; ties (and the
    unscored heads) in layer-then-head order."""
    scores = graph.scores()
    heads = [head.name for head in all_heads(graph)]  # a graph has n_layers and n_heads, as a config does
    return sorted(heads, key=lambda name: (name not in scores, -abs(scores.get(name, 0.0))))


def top_heads(graph: HeadGraph, k: int) -> list[str]:
    """The first `k` heads of `ranked_heads`."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidOptionError(f"k={k!r}; expected a non-negative number of heads")
    return ranked_heads(graph)[:k]


def score_agreement(a: HeadGraph, b: HeadGraph) -> float:
    """Spearman's rho between the |scores| of two graphs, over the heads both measured."""
    sa, sb = a.scores(), b.scores()
    common = [name for name in sa if name in sb and not (math.isnan(sa[name]) or math.isnan(sb[name]))]
    return spearman([abs(sa[n]) for n in common], [abs(sb[n]) for n in common])
