"""Which edges of a model's one edge graph an engine's HeadGraph scores (``meta["unscored_edges"]``).

The edge graph every graph engine is set against (MIB's, and edge attribution's `Layout`): senders are the input
(``embed``), every head and every MLP; receivers are every head's q, k and v inputs, every MLP's input and the
read-out (``logits``); an edge exists where the sender writes before the receiver reads (embed first, then per layer
its heads, then its MLP). An edge's kind is ``"{sender kind}->{receiver kind}"``, with the input for a head receiver:
``"embed->head.v"``, ``"head->head.k"``, ``"mlp->logits"``. An edge into a head counts as scored for input ``i``
when it carries ``score_i`` or was measured for ``i`` alone (``inputs == i``); an edge into a head with a score for
its inputs together only is "scored as a whole receiver". Unscored edges rank last in any comparison of rankings.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from circuits.graph import HeadGraph
from circuits.nodes import EMBED, INPUTS, LOGITS, Head, all_heads, all_mlps, parse_node

Kinds = dict[str, int]


def stage(node: Any) -> int:
    """When a node writes or reads: embed -1, layer l's heads 2l, its MLP 2l + 1, the logits last (a large number)."""
    node = parse_node(node)
    if node.kind == "embed":
        return -1
    if node.kind == "logits":
        return 1 << 30
    return 2 * node.layer + (node.kind == "mlp")


def full_edges(model: Any) -> list[tuple[str, str, Optional[str]]]:
    """Every edge of `model`'s edge graph as (sender, receiver, input); input None for an MLP or the logits."""
    senders = [EMBED] + [n.name for n in sorted([*all_heads(model), *all_mlps(model)], key=_order)]
    receivers = [n.name for n in sorted([*all_heads(model), *all_mlps(model)], key=_order)] + [LOGITS]
    out = []
    for receiver in receivers:
        inputs = INPUTS if receiver != LOGITS and parse_node(receiver).kind == "head" else (None,)
        out += [(s, receiver, i) for s in senders if stage(s) < stage(receiver) for i in inputs]
    return out


def kind(sender: str, receiver: str, input: Optional[str]) -> str:
    return f"{parse_node(sender).kind}->{parse_node(receiver).kind}" + (f".{input}" if input else "")


def scored_inputs(data: dict[str, Any]) -> set[str]:
    """The inputs of a head receiver that an edge's attributes score one by one."""
    alone = data.get("inputs")
    return {i for i in INPUTS if f"score_{i}" in data or alone == i}


def unscored(model: Any, graph: HeadGraph, why: str = "") -> dict[str, Any]:
    """``meta["unscored_edges"]``: the kinds of edges `graph` leaves unscored, in words (``words``, with `why`) and as
    lists: ``kinds`` (no edge of the kind scored), ``partly`` (kind -> [unscored, of all]) and ``whole_receiver``
    (kinds into heads scored only for q, k and v together)."""
    total, missing, whole = Counter(), Counter(), set()
    for sender, receiver, input in full_edges(model):
        name = kind(sender, receiver, input)
        total[name] += 1
        data = graph.nx.edges[sender, receiver] if graph.nx.has_edge(sender, receiver) else None
        scored = data is not None and data.get("score") is not None
        if scored and input is not None and input not in scored_inputs(data):
            scored = False
            whole.add(name)
        missing[name] += not scored
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
            words += f"; {', '.join(whole_receiver)}: scored only for q, k and v together"
        words += f" ({why})" if why else ""
    return {"kinds": kinds, "partly": partly, "whole_receiver": whole_receiver, "words": words}


def _order(node: Any) -> tuple[int, int]:
    return stage(node), getattr(node, "head", 0)
