"""A HeadGraph as the viewer's data: compact columns of nodes and edges, its record, and faithfulness curves.

Edges come twice, as columns (not objects: the SmolLM2 edge graph has ~44k edges, ~130k with q, k and v apart):
``edges``, one per graph edge (sender, receiver, score, effect), and ``split``, the same edges with a head receiver's
q, k and v inputs apart, exactly `HeadGraph.scored_edges` (an input's own score where the engine measured it, else
the edge's score for each input it covers), each pointing at its graph edge. The page ranks them itself, by
`HeadGraph.top_edges`'s rules (signed: by score; absolute: by |score|; ties keep the graph's order). Numbers keep 6
significant digits (what the view shows).

A graph scored per position (``meta["positions"]``: docs/positional.md) also gets ``positions``: its labels and its
edges at each label, `HeadGraph.scored_edges(positional=True)`, as columns. Those are many (SmolLM2 with 6 spans:
~800k), so only the top `positional_edges` by |score| and by score are embedded (each ranking's top k, for k up to
that limit, is then exact in the page), with the count of all of them.
"""

from __future__ import annotations

import heapq
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


def graph_data(graph: Any, label: Optional[str] = None, curve: Any = None, *,
               positional_edges: int = 2000) -> dict[str, Any]:
    """The viewer's data for one graph: its nodes, its edges (whole and split by input) as columns, its record, the
    whole model's edge count (MIB's, `HeadGraph.edge_total`), where there is one its faithfulness curve (`curve`,
    else ``graph.meta["curve"]``), and for a graph scored per position its top `positional_edges` edges at
    positions (`_positional`; only with ``meta["positions"]``)."""
    nodes = list(graph.nx.nodes(data=True))
    index = {name: i for i, (name, _) in enumerate(nodes)}
    edges: dict[str, list[Any]] = {"s": [], "r": [], "score": [], "effect": []}
    effects: list[Optional[str]] = []
    row: dict[tuple[str, str], int] = {}
    for sender, receiver, data in graph.nx.edges(data=True):
        score = number(data.get("score"))
        if score is None:
            continue  # unscored edges are part of no ranking
        effect = data.get("effect")
        if effect not in effects:
            effects.append(effect)
        row[sender, receiver] = len(edges["s"])
        edges["s"].append(index[sender])
        edges["r"].append(index[receiver])
        edges["score"].append(score)
        edges["effect"].append(effects.index(effect))
    meta = graph.meta
    data = {
        "label": label or str(meta.get("engine", "graph")),
        "layers": graph.nx.graph.get("n_layers"),
        "heads": graph.nx.graph.get("n_heads"),
        "edgeTotal": _edge_total(graph),
        "record": {key: meta[key] for key in RECORD if key in meta},
        "nodes": [[name, data.get("kind"), data.get("layer"), data.get("head"), number(data.get("score"))]
                  for name, data in nodes],
        "edges": edges,
        "split": _split(graph, effects, row),
        "effects": effects,
        "curve": curve_data(curve if curve is not None else meta.get("curve")),
    }
    if meta.get("positions"):  # a plain graph's data stays as it was
        data["positions"] = _positional(graph, effects, row, positional_edges)
    return data


def _asked(effects: list[Optional[str]]) -> list[Optional[str]]:
    """The effects to ask `scored_edges` for: None (every edge) when the graph's edges measure one."""
    return [None] if len(effects) == 1 else [e for e in effects if e is not None]


def _split(graph: Any, effects: list[Optional[str]], row: dict[tuple[str, str], int]) -> dict[str, list[Any]]:
    """`scored_edges` of each effect as columns: the graph edge's row, the input (index into q, k, v; None for a
    receiver that is no head) and the score. Edges that say no effect, in a graph whose others do, stay whole."""
    out: dict[str, list[Any]] = {"e": [], "input": [], "score": []}
    for effect in _asked(effects):
        for edge, score in graph.scored_edges(effect):
            out["e"].append(row[edge.sender.name, edge.receiver.name])
            out["input"].append(None if edge.input is None else INPUTS.index(edge.input))
            out["score"].append(number(score))
    if len(effects) > 1 and None in effects:
        for (u, v), i in row.items():
            if graph.nx.edges[u, v].get("effect") is None:
                out["e"].append(i)
                out["input"].append(None)
                out["score"].append(number(graph.nx.edges[u, v]["score"]))
    return out


def _positional(graph: Any, effects: list[Optional[str]], row: dict[tuple[str, str], int],
                limit: int) -> dict[str, Any]:
    """`scored_edges(positional=True)` of each effect, only the top `limit` by |score| and the top `limit` by score
    (in the graph's order, so that the page's stable ranking breaks ties as `HeadGraph.circuit` does), as columns:
    the graph edge's row, the input (as in `_split`), the label (index into ``labels``) and the score; with the
    labels, their kind, the limit and how many edges at positions each effect has (``totals``, by effect index)."""
    kind, labels = graph.position_kind()
    at = {name: i for i, name in enumerate(labels)}
    out: dict[str, Any] = {"kind": kind, "labels": labels, "limit": limit, "totals": [0] * len(effects),
                           "e": [], "input": [], "at": [], "score": []}
    for effect in _asked(effects):
        scored = [(edge, number(score)) for edge, score in graph.scored_edges(effect, positional=True)]
        if effect is not None:
            out["totals"][effects.index(effect)] = len(scored)
        else:
            out["totals"] = [len(scored)]
        keep = {i for key in (lambda i: abs(scored[i][1]), lambda i: scored[i][1])
                for i in heapq.nlargest(limit, range(len(scored)), key=key)}
        for i in sorted(keep):
            edge, score = scored[i]
            out["e"].append(row[edge.sender.name, edge.receiver.name])
            out["input"].append(None if edge.input is None else INPUTS.index(edge.input))
            out["at"].append(at[str(edge.position)])
            out["score"].append(score)
    return out


def _edge_total(graph: Any) -> Optional[int]:
    """MIB's count of the whole model's edges (every sender to every later receiver, q/k/v apart), for fractions."""
    if "n_layers" not in graph.nx.graph or "n_heads" not in graph.nx.graph:
        return None
    return int(graph.edge_total())


def curve_data(curve: Any) -> Optional[dict[str, Any]]:
    """A faithfulness curve as ``{"fractions", "signed", "absolute", "random", "cpr", "cmd"}`` (fractions of the
    model's edges; a faithfulness per fraction for circuits chosen by score and by |score|; None where not measured).
    From an `EdgeCurve`-like object or mapping (``fractions``, ``signed``, ``absolute``, ``cpr``, ``cmd``), or one
    series (``fraction``/``fractions`` and ``faithfulness``, with ``by`` saying its ranking; both if not said).
    None stays None."""
    if curve is None:
        return None
    get = curve.get if isinstance(curve, Mapping) else (lambda key, default=None: getattr(curve, key, default))
    fractions = get("fractions", None)
    if fractions is None:
        fractions = get("fraction", None)
    series = {by: get(by, None) for by in ("signed", "absolute")}
    single = get("faithfulness", None)
    if single is not None and series == {"signed": None, "absolute": None}:
        by = get("by", None)
        series = {key: single for key in series if by in (None, key)}
    if fractions is None or not any(s is not None for s in series.values()) or any(
            s is not None and (isinstance(s, (str, bytes)) or len(s) != len(fractions)) for s in series.values()):
        raise InvalidOptionError(f"curve {curve!r}; expected fractions of edges and a faithfulness per fraction "
                                 "(`fractions` with `signed` and/or `absolute`, as EdgeCurve has, or `fraction` with "
                                 "`faithfulness`)")
    random = get("random", None)
    return {"fractions": [float(x) for x in fractions],
            "signed": _numbers(series.get("signed")), "absolute": _numbers(series.get("absolute")),
            "random": curve_data(random) if random is not None else None,
            "cpr": number(get("cpr", None)), "cmd": number(get("cmd", None))}


def _numbers(values: Any) -> Optional[list[Optional[float]]]:
    return None if values is None else [number(v) for v in values]


def view_data(graphs: Sequence[Any], labels: Optional[Sequence[str]] = None, curves: Any = None, *,
              default_edges: int = 300, by: str = "absolute", positional_edges: int = 2000) -> dict[str, Any]:
    """What the page embeds: every graph's data, and the view's starting state. `curves`: one curve per graph (or
    None), or a `Curves`-like object (``curves`` by label, ``random``), whose random circuits' curve goes with each.
    `positional_edges`: how many edges at positions a graph scored per position embeds (per ranking)."""
    from circuits.graph import RANKINGS

    if by not in RANKINGS:
        raise InvalidOptionError(f"by={by!r}; expected one of {RANKINGS}")
    for name, count in (("default_edges", default_edges), ("positional_edges", positional_edges)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidOptionError(f"{name}={count!r}; expected a positive number of edges")
    labels = list(labels) if labels is not None else _labels(graphs)
    if not graphs or len(labels) != len(graphs):
        raise InvalidOptionError(f"{len(graphs)} graphs and {len(labels)} labels; expected at least one graph and "
                                 "one label per graph")
    per_graph = _per_graph(curves, labels)
    return {"graphs": [graph_data(g, label, c, positional_edges=positional_edges)
                       for g, label, c in zip(graphs, labels, per_graph)],
            "defaultEdges": default_edges, "by": by}


def _per_graph(curves: Any, labels: list[str]) -> list[Any]:
    if curves is None:
        return [None] * len(labels)
    by_label = getattr(curves, "curves", None)
    if isinstance(by_label, Mapping):  # a Curves: each graph's by its label, with the random circuits' beside it
        random = getattr(curves, "random", None)
        return [None if by_label.get(label) is None else _with_random(by_label[label], random) for label in labels]
    curves = list(curves)
    if len(curves) != len(labels):
        raise InvalidOptionError(f"{len(curves)} curves for {len(labels)} graphs; expected one per graph (or None)")
    return curves


def _with_random(curve: Any, random: Any) -> dict[str, Any]:
    keys = ("fractions", "signed", "absolute", "cpr", "cmd")
    return {**{key: getattr(curve, key, None) for key in keys}, "random": random}


def _labels(graphs: Sequence[Any]) -> list[str]:
    """Each graph's engine name, numbered where two graphs share one."""
    names = [str(g.meta.get("engine", "graph")) for g in graphs]
    return [name if names.count(name) == 1 else f"{name} ({i + 1})" for i, name in enumerate(names)]
