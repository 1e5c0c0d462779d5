"""Which edges of a model's one edge graph an engine's HeadGraph scores (``meta["unscored_edges"]``).

The edge graph every graph engine is set against (`circuits.nodes.all_edges`: MIB's, and edge attribution's
`Layout`): senders are the input (``embed``), every head and every MLP; receivers are every head's q, k and v inputs,
every MLP's input and the read-out (``logits``); an edge exists where the sender writes before the receiver reads
(`circuits.nodes.stage`). An edge's kind is ``"{sender kind}->{receiver kind}"``, with the input for a head receiver:
``"embed->head.v"``, ``"head->head.k"``, ``"mlp->logits"``. An edge into a head counts as scored for input ``i``
as `HeadGraph.scored_edges` says (its own ``score_i``, else the score of the inputs measured together); one whose q, k
and v edges share one score is "scored as a whole receiver". Unscored edges rank last in any comparison of rankings.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from circuits.graph import HeadGraph
from circuits.nodes import INPUTS, all_edges


def scored_inputs(data: dict[str, Any]) -> set[str]:
    """The inputs of a head receiver that an edge's attributes score one by one."""
    alone = data.get("inputs")
    return {i for i in INPUTS if f"score_{i}" in data or alone == i}


def unscored(model: Any, graph: HeadGraph, why: str = "") -> dict[str, Any]:
    """``meta["unscored_edges"]``: the kinds of edges of the model's graph that `graph` leaves unscored (not given by
    `HeadGraph.scored_edges`, whichever effect they measure), in words (``words``, with `why`) and as lists: ``kinds``
    (no edge of the kind scored), ``partly`` (kind -> [unscored, of all]) and ``whole_receiver`` (kinds into heads
    whose q, k and v edges share one score, measured for the inputs together)."""
    scored = {edge for effect in graph.effects() for edge, _ in graph.scored_edges(effect=effect)}
    total, missing, whole = Counter(), Counter(), set()
    inputs_scored: dict[tuple, set[str]] = {}  # per (sender, receiver) of a scored head edge: its inputs scored alone
    for edge in all_edges(model):  # ~10^5 on SmolLM2: nothing but dictionary work per edge
        name = f"{edge.sender.kind}->{edge.receiver.kind}" + (f".{edge.input}" if edge.input else "")  # its kind
        total[name] += 1
        if edge not in scored:
            missing[name] += 1
        elif edge.input is not None:
            pair = (edge.sender, edge.receiver)
            if pair not in inputs_scored:
                inputs_scored[pair] = scored_inputs(graph.nx.get_edge_data(edge.sender.name, edge.receiver.name))
            if edge.input not in inputs_scored[pair]:
                whole.add(name)
    kinds = sorted(k for k in total if missing[k] == total[k])
    partly = {k: [missing[k], total[k]] for k in sorted(total) if 0 < missing[k] < total[k]}
    whole_receiver = sorted(whole)
    if not kinds and not partly:
        words = "none: every edge of the model's edge graph is scored"
    else:
        parts = ([f"no {', '.join(kinds)} edge"] if kinds else []) + \
                [f"{m} of {t} {k} edges" for k, (m, t) in partly.items()]
        words = "unscored (ranked last): " + "; ".join(parts)
    if whole_receiver:
        words += f"; {', '.join(whole_receiver)}: one score for q, k and v together"
    words += f" ({why})" if why and (kinds or partly or whole_receiver) else ""
    return {"kinds": kinds, "partly": partly, "whole_receiver": whole_receiver, "words": words}
