"""Which engines' graphs `compare` judges as edge circuits, and their MIB edge curves.

A graph is judged by its **edges** when it scores the ``direct`` effect of edges into heads' q, k or v inputs (path
patching and edge attribution; any graph that says so, `is_edge_graph`): its circuits are its top edges, pruned to
input -> read-out paths, evaluated by MIB's edge ablation (`circuits.evaluation.curves.edge_curves`: CPR over the
circuits chosen by signed score, CMD over those chosen by |score|). Every other graph (activation patching, clamped
training, CD-T while its edges measure shares) is judged by its **heads** (`circuits.comparison.faithfulness`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from circuits.evaluation.curves import FRACTIONS, Curves, edge_curves
from circuits.graph import HeadGraph

EDGES, HEADS = "edges", "heads"


def is_edge_graph(graph: HeadGraph) -> bool:
    """Whether `graph` scores direct effects of edges into a head's q, k or v input (an edge circuit can be read
    from it); a graph with only head -> read-out edges, or edges of other effects, is judged by its heads."""
    return any(edge.input is not None for edge, _ in graph.scored_edges("direct"))


def kinds(graphs: Mapping[str, HeadGraph]) -> dict[str, str]:
    """Each graph's label -> ``"edges"`` or ``"heads"``: the kind of circuit `compare` judges it by."""
    return {label: EDGES if is_edge_graph(graph) else HEADS for label, graph in graphs.items()}


def curves_of_edges(model: Any, task: Any, graphs: Mapping[str, HeadGraph], *, ablation: str, n: int, seed: int,
                    draws: int, fractions: Sequence[float] = FRACTIONS, memory_mb: float) -> Optional[Curves]:
    """MIB's edge curves of the edge graphs among `graphs` (by their ``direct`` edges) against `draws` random edge
    circuits per fraction, on the clean prompts of `seed`; None when no graph is an edge graph."""
    chosen = {label: graph for label, graph in graphs.items() if is_edge_graph(graph)}
    if not chosen:
        return None
    return edge_curves(model, task, chosen, ablation=ablation, n=n, seed=seed, fractions=fractions, draws=draws,
                       effect="direct", memory_mb=memory_mb)
