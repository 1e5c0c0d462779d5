"""A HeadGraph as the viewer's data: compact columns of nodes and edges, its record, and a faithfulness curve.

Edges are written as columns (sender index, receiver index, score, and where the engine scored each input of a head
receiver alone, its q, k and v scores) rather than as objects: the SmolLM2 edge graph has ~44k edges, and columns
keep the file a few MB. Numbers keep 6 significant digits (what the view shows). The viewer ranks edges itself; the
ranking rules are `HeadGraph.top_edges`'s (signed: by score; absolute: by |score|; ties keep the graph's order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from circuits.errors import InvalidOptionError

INPUTS = ("q", "k", "v")
RECORD = ("engine", "task", "model", "n", "seed", "version", "score", "metric_clean", "metric_corrupted",
          "options", "selection")


def number(value: Any) -> Optional[float]:
    """A float kept to 6 significant digits; None for a missing or NaN value (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else float(f"{value:.6g}")


def graph_data(graph: Any, label: Optional[str] = None, evaluation: Any = None) -> dict[str, Any]:
    """The viewer's data for one graph: its nodes, its edges as columns, its record and, where there is one, the
    faithfulness curve of its circuits (`evaluation`, or ``graph.meta["curve"]``)."""
    nodes = list(graph.nx.nodes(data=True))
    index = {name: i for i, (name, _) in enumerate(nodes)}
    columns: dict[str, list[Any]] = {"s": [], "r": [], "score": [], "effect": [], "q": [], "k": [], "v": []}
    effects: list[Optional[str]] = []
    per_input = False
    for sender, receiver, data in graph.nx.edges(data=True):
        score = number(data.get("score"))
        if score is None:
            continue  # unscored edges are not part of any ranking
        effect = data.get("effect")
        if effect not in effects:
            effects.append(effect)
        columns["s"].append(index[sender])
        columns["r"].append(index[receiver])
        columns["score"].append(score)
        columns["effect"].append(effects.index(effect))
        for name in INPUTS:
            value = number(data.get(f"score_{name}"))
            columns[name].append(value)
            per_input = per_input or value is not None
    if not per_input:
        for name in INPUTS:
            del columns[name]
    meta = graph.meta
    return {
        "label": label or str(meta.get("engine", "graph")),
        "layers": graph.nx.graph.get("n_layers"),
        "heads": graph.nx.graph.get("n_heads"),
        "record": {key: meta[key] for key in RECORD if key in meta},
        "nodes": [[name, data.get("kind"), data.get("layer"), data.get("head"), number(data.get("score"))]
                  for name, data in nodes],
        "edges": columns,
        "effects": effects,
        "curve": curve_data(evaluation if evaluation is not None else meta.get("curve")),
    }


def curve_data(curve: Any) -> Optional[dict[str, Any]]:
    """A faithfulness curve as ``{"points": [[fraction of edges, faithfulness], ...], "cpr", "cmd", "by"}``, from
    a mapping or an object with ``fraction`` (or ``fractions``) and ``faithfulness`` (and, where known, ``cpr``,
    ``cmd``, ``by``); None stays None."""
    if curve is None:
        return None
    get = curve.get if isinstance(curve, Mapping) else (lambda key, default=None: getattr(curve, key, default))
    fractions = get("fraction", None)
    if fractions is None:
        fractions = get("fractions", None)
    faithfulness = get("faithfulness", None)
    if fractions is None or faithfulness is None or not isinstance(faithfulness, Sequence) \
            or len(fractions) != len(faithfulness):
        raise InvalidOptionError(f"curve {curve!r}; expected fractions of edges and one faithfulness per fraction "
                                 "(a mapping or an object with `fraction` and `faithfulness` of equal length)")
    points = sorted((float(x), number(y)) for x, y in zip(fractions, faithfulness))
    return {"points": [[x, y] for x, y in points], "cpr": number(get("cpr", None)),
            "cmd": number(get("cmd", None)), "by": get("by", None)}


def view_data(graphs: Sequence[Any], labels: Optional[Sequence[str]] = None,
              evaluations: Optional[Sequence[Any]] = None, *, default_edges: int = 300,
              by: str = "absolute") -> dict[str, Any]:
    """What the page embeds: every graph's data, and the view's starting state."""
    from circuits.graph import RANKINGS

    if by not in RANKINGS:
        raise InvalidOptionError(f"by={by!r}; expected one of {RANKINGS}")
    if isinstance(default_edges, bool) or not isinstance(default_edges, int) or default_edges < 1:
        raise InvalidOptionError(f"default_edges={default_edges!r}; expected a positive number of edges")
    labels = list(labels) if labels is not None else _labels(graphs)
    evaluations = list(evaluations) if evaluations is not None else [None] * len(graphs)
    if not graphs or len(labels) != len(graphs) or len(evaluations) != len(graphs):
        raise InvalidOptionError(f"{len(graphs)} graphs, {len(labels)} labels, {len(evaluations)} evaluations; "
                                 "expected at least one graph and one label and evaluation per graph")
    return {"graphs": [graph_data(g, label, e) for g, label, e in zip(graphs, labels, evaluations)],
            "defaultEdges": default_edges, "by": by}


def _labels(graphs: Sequence[Any]) -> list[str]:
    """Each graph's engine name, numbered where two graphs share one."""
    names = [str(g.meta.get("engine", "graph")) for g in graphs]
    return [name if names.count(name) == 1 else f"{name} ({i + 1})" for i, name in enumerate(names)]
