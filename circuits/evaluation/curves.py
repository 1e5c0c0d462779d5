"""MIB's faithfulness curve over edge circuits, and its two areas, CPR and CMD.

For each size k in `FRACTIONS` (of every edge of the model's graph, ``int(k * total)`` edges, as MIB counts them)
an engine's circuit is its top edges, pruned to input -> read-out paths (`HeadGraph.circuit`); faithfulness
``f(k) = (m_C − m_∅) / (m_full − m_∅)`` under the chosen ablation (`circuits.evaluate`). Following MIB
(``evaluate_area_under_curve`` in hannamw/MIB-circuit-track):

- **CPR** (higher is better): the trapezoid area under f(k) over k, circuits chosen by **signed** score;
- **CMD** (lower is better): the trapezoid area under |1 − f(k)|, circuits chosen by **|score|**.

Both integrate over the fractions asked for (0.001 to 1), not over the edges left after pruning. The baseline is
`draws` random circuits per size (edges in a random order, then the same count and pruning), averaged per size.
Every circuit of every engine and the random ones go through one `evaluate` call, stacked into as few passes as
memory allows, duplicates evaluated once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from circuits.errors import InvalidOptionError
from circuits.evaluation.faithfulness import evaluate
from circuits.graph import HeadGraph, pruned
from circuits.nodes import all_edges, position_of

Numbers = Union[Sequence[Union[int, float]], np.ndarray]
FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def trapezoid(x: Numbers, y: Numbers) -> float:
    """The trapezoid rule: sum over intervals of (x[i+1] − x[i]) · (y[i] + y[i+1]) / 2."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


@dataclass(frozen=True)
class EdgeCurve:
    """Faithfulness of the circuits chosen by signed score (CPR's) and by |score| (CMD's) at each fraction of edges,
    with the number of edges each kept after pruning."""

    fractions: list[float]
    signed: list[float]
    absolute: list[float]
    edges_signed: list[int]
    edges_absolute: list[int]

    @property
    def cpr(self) -> float:
        """The area under the signed-selection curve (higher is better)."""
        return trapezoid(self.fractions, self.signed)

    @property
    def cmd(self) -> float:
        """The area under |1 − f| of the |score|-selection curve (lower is better)."""
        return trapezoid(self.fractions, np.abs(1.0 - np.asarray(self.absolute)))

    def of(self, by: str) -> dict[str, Any]:
        """One selection's curve as a mapping (``fractions``, ``faithfulness``, ``cpr``, ``cmd``, ``by``), the shape
        the circuit view takes too (`circuits.view.to_html`'s ``curves=`` reads an `EdgeCurve` or `Curves` as they
        are)."""
        if by not in ("signed", "absolute"):
            raise InvalidOptionError(f"by={by!r}; expected 'signed' or 'absolute'")
        faithfulness = self.signed if by == "signed" else self.absolute
        return {"fractions": list(self.fractions), "faithfulness": list(faithfulness), "cpr": self.cpr, "cmd": self.cmd,
                "by": by}


@dataclass(frozen=True)
class Curves:
    """Each graph's `EdgeCurve` by label, the random circuits' (their mean per size, and every draw), the metric of
    the whole model and of the empty circuit, and how they were measured."""

    curves: dict[str, EdgeCurve]
    random: EdgeCurve
    random_draws: list[list[float]]  # [size][draw]
    full: float
    empty: float
    ablation: str
    total_edges: int

    def table(self) -> str:
        """Markdown: CPR and CMD per graph and for random circuits."""
        lines = ["| graph | CPR ↑ | CMD ↓ |", "|---|---|---|"]
        for label, curve in [*self.curves.items(), ("random", self.random)]:
            lines.append(f"| {label} | {curve.cpr:.3f} | {curve.cmd:.3f} |")
        return "\n".join(lines)


def edge_curves(model: Any, task: Any, graphs: Any, *,
                ablation: str = "patching", n: int = 32, seed: int = 1, reference: Any = None,
                fractions: Sequence[float] = FRACTIONS, draws: int = 5, random_seed: int = 0, greedy: bool = False,
                effect: Optional[str] = None, positional: bool = False, memory_mb: float = 512.0) -> Curves:
    """MIB's curves of the edge circuits of `graphs` (a HeadGraph, a list, or a mapping label -> HeadGraph; a list's
    labels are ``meta["engine"]``) on `model` and `task`, against `draws` random circuits per size; `greedy` grows
    circuits from the read-out instead of taking the top edges; `effect` picks one kind of edge
    (`HeadGraph.top_edges`). `positional`: circuits of edges at positions (docs/positional.md), fractions of every edge
    at every label the graphs share (random circuits drawn among those too). The rest as in `circuits.evaluate`."""
    labelled = _labelled(graphs)
    fractions = _checked_fractions(fractions)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 0:
        raise InvalidOptionError(f"draws={draws!r}; expected a number of random circuits per size >= 0")
    every = all_edges(model)
    if positional:
        every = [edge.at(position) for position in _shared_positions(labelled) for edge in every]
    total = len(every)
    chosen: dict[str, dict[str, list[frozenset]]] = {
        label: {by: [graph.circuit(fraction=f, by=by, total=total, greedy=greedy, effect=effect, positional=positional)
                     for f in fractions]
                for by in ("signed", "absolute")}
        for label, graph in labelled.items()}
    generator = torch.Generator().manual_seed(random_seed)
    random = [[pruned(every[i] for i in torch.randperm(total, generator=generator)[:int(f * total)].tolist())
               for _ in range(draws)] for f in fractions]
    unique = list(dict.fromkeys([c for by in chosen.values() for cs in by.values() for c in cs]
                                + [c for row in random for c in row]))
    result = evaluate(model, task, unique, ablation=ablation, n=n, seed=seed, reference=reference,
                      memory_mb=memory_mb)
    faithful = dict(zip(unique, result.faithfulness))
    curves = {label: EdgeCurve(list(fractions), [faithful[c] for c in by["signed"]],
                               [faithful[c] for c in by["absolute"]], [len(c) for c in by["signed"]],
                               [len(c) for c in by["absolute"]])
              for label, by in chosen.items()}
    draws_f = [[faithful[c] for c in row] for row in random]
    mean = [float(np.mean(row)) if row else float("nan") for row in draws_f]
    sizes = [int(np.mean([len(c) for c in row])) if row else 0 for row in random]
    return Curves(curves, EdgeCurve(list(fractions), mean, mean, sizes, sizes), draws_f, result.full, result.empty,
                  ablation, total)


def _shared_positions(graphs: dict[str, HeadGraph]) -> list[Any]:
    """The positions every graph was scored at (the same labels in all of them), read as `Edge` positions."""
    kinds = {label: graph.position_kind() for label, graph in graphs.items()}  # a typed error for a plain graph
    first = next(iter(kinds.values()))
    for label, kind in kinds.items():
        if kind != first:
            raise InvalidOptionError(f"graph {label!r} was scored at {kind}, another at {first}; expected graphs "
                                     "scored at the same positions for positional curves")
    return [position_of(name) for name in first[1]]


def _checked_fractions(fractions: Sequence[float]) -> list[float]:
    values = list(fractions)
    bad = [f for f in values if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1]
    if bad or len(values) < 2 or values != sorted(values):
        raise InvalidOptionError(f"fractions={values!r} (bad: {bad!r}); expected at least two increasing fractions "
                                 "of the edges in [0, 1]")
    return [float(f) for f in values]


def _labelled(graphs: Any) -> dict[str, HeadGraph]:
    if isinstance(graphs, HeadGraph):
        graphs = [graphs]
    items = list(graphs.items()) if isinstance(graphs, Mapping) else [(None, g) for g in graphs]
    if not items:
        raise InvalidOptionError("graphs=[]; expected at least one HeadGraph")
    out: dict[str, HeadGraph] = {}
    for index, (label, graph) in enumerate(items):
        if not isinstance(graph, HeadGraph):
            raise InvalidOptionError(f"graphs[{index}] is a {type(graph).__name__}; expected a HeadGraph")
        label = label or graph.meta.get("engine") or f"graph {index}"
        if label in out:
            label = f"{label} ({index})"
        out[label] = graph
    return out
