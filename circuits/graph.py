"""HeadGraph: a thin wrapper over a networkx.DiGraph of attention heads, MLPs, the input and the read-out.

Nodes are named by the node vocabulary (`circuits.nodes`): heads ``"L{layer}H{head}"`` (kind ``"head"``,
attributes ``layer``, ``head``), MLPs ``"M{layer}"`` (kind ``"mlp"``), and the special nodes ``"embed"`` (the
input) and ``"logits"`` (the read-out). A node the engine measured carries ``score``; one it did not has none
(NaN in `matrix`). `heads`, `scores`, `matrix` and `top` are about heads only.

Every edge carries ``score`` and ``effect``, which says what the score measures (`EFFECTS`):
``"direct"`` (the metric change through that path alone: path patching, edge attribution), ``"total"`` (the
metric change through everything downstream of the sender: activation patching's and CD-T's head -> logits
edges), ``"share"`` (CD-T's head -> head edges: the sender's share of the receiver's clean - corrupted change)
or ``"interaction"`` (clamped training: the effect of ablating both heads beyond the sum of each). The edge
selections (`top_edges`, `threshold_edges`, `greedy_edges`) refuse a graph whose edges measure different
effects unless told which (``effect=``). ``meta`` (engine and options, task, model, n, seed, version, and in
``meta["score"]`` what node and edge scores mean) lives in ``graph.nx.graph`` so it travels with the JSON.
Engines build graphs through `add_node` and `add_edge`, never through networkx directly.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Union

import networkx as nx
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.errors import InvalidOptionError, MissingOptionError, MixedEffectsError, RenamedError, RenamedOptionError
from circuits.nodes import (EMBED, INPUTS, LOGITS, MLP, Edge, Head, Input, Node, Readout, all_edges, all_heads,
                            parse_node, position_of)

__all__ = ["EFFECTS", "EMBED", "LOGITS", "RANKINGS", "Edge", "Head", "HeadGraph", "all_heads", "pruned"]

EFFECTS = ("direct", "total", "share", "interaction")
_TUPLE = "__tuple__"  # JSON has no tuples: they are written as {"__tuple__": [...]} and read back as tuples
_RENAMED = {"head_name": "circuits.nodes.Head(layer, head).name", "parse_head": "circuits.nodes.Head.parse(name)",
            "mlp_name": "circuits.nodes.MLP(layer).name", "mlp_layer": "circuits.nodes.parse_node(name).layer"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        raise RenamedError("circuits.graph", name, _RENAMED[name])
    raise AttributeError(f"module 'circuits.graph' has no attribute {name!r}")


NodeLike = Union[Node, str]


class HeadGraph:
    def __init__(self, graph: Optional[nx.DiGraph] = None, *, n_layers: Optional[int] = None,
                 n_heads: Optional[int] = None, meta: Optional[dict[str, Any]] = None):
        self.nx: nx.DiGraph = graph if graph is not None else nx.DiGraph()
        if n_layers is not None:
            self.nx.graph["n_layers"] = n_layers
        if n_heads is not None:
            self.nx.graph["n_heads"] = n_heads
        self.nx.graph.setdefault("meta", {}).update(meta or {})
        for special in (EMBED, LOGITS):
            if special not in self.nx:
                self.nx.add_node(special, kind=special)

    # --- building -----------------------------------------------------------------------------------
    @classmethod
    def from_scores(cls, scores: Float[Tensor, "n_layers n_heads"], meta: Optional[dict[str, Any]] = None,
                    effect: Optional[str] = None, **node_attributes: Tensor) -> "HeadGraph":
        """One node per head with its score, and an edge head -> ``"logits"`` carrying the same score (as
        `effect`, if given). Extra per-head tensors (``[n_layers, n_heads, ...]``) become node attributes (lists)."""
        n_layers, n_heads = scores.shape
        graph = cls(n_layers=n_layers, n_heads=n_heads, meta=meta)
        for layer in range(n_layers):
            for head in range(n_heads):
                extras = {k: v[layer, head].tolist() for k, v in node_attributes.items()}
                score = float(scores[layer, head])
                graph.add_node(Head(layer, head), score, **extras)
                graph.add_edge(Head(layer, head), LOGITS, score, effect=effect)
        return graph

    def add_node(self, node: NodeLike, score: Optional[float] = None, **attributes: Any) -> str:
        """Add (or update) a head or MLP node (a `Head`, an `MLP` or its name); `score` None leaves it
        unmeasured. Returns the node's name."""
        node = parse_node(node)
        if isinstance(node, (Input, Readout)):
            raise InvalidOptionError(f"node {node.name!r} is always in the graph; expected a head or an MLP")
        values = dict(kind=node.kind, layer=node.layer, **attributes)
        if isinstance(node, Head):
            values["head"] = node.head
        if score is not None:
            values["score"] = float(score)
        self.nx.add_node(node.name, **values)
        return node.name

    def add_edge(self, sender: NodeLike, receiver: NodeLike, score: float, *, effect: Optional[str] = None,
                 **attributes: Any) -> tuple[str, str]:
        """An edge scored `score` between nodes (or their names), with what the score measures (`effect`, one of
        `EFFECTS`; None: not said). Head and MLP endpoints are added as unmeasured nodes if missing."""
        if effect is not None and effect not in EFFECTS:
            raise InvalidOptionError(f"effect={effect!r}; expected one of {EFFECTS}")
        names = []
        for node in (parse_node(sender), parse_node(receiver)):
            if node.name not in self.nx:
                self.add_node(node)
            names.append(node.name)
        if effect is not None:
            attributes["effect"] = effect
        self.nx.add_edge(names[0], names[1], score=float(score), **attributes)
        return names[0], names[1]

    # --- reading ------------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        return self.nx.graph["meta"]

    @property
    def n_layers(self) -> int:
        return int(self.nx.graph["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.nx.graph["n_heads"])

    def heads(self) -> list[str]:
        return [n for n, data in self.nx.nodes(data=True) if data.get("kind") == "head"]

    def mlps(self) -> list[str]:
        """The MLP nodes (``"M{layer}"``), in insertion order."""
        return [n for n, data in self.nx.nodes(data=True) if data.get("kind") == "mlp"]

    def scores(self) -> dict[str, float]:
        """Head name -> score, for the heads the engine measured (no NaN)."""
        out = {}
        for name in self.heads():
            score = self.nx.nodes[name].get("score")
            if score is not None and not math.isnan(score):
                out[name] = score
        return out

    def matrix(self) -> Float[Tensor, "n_layers n_heads"]:
        """Scores as a ``[n_layers, n_heads]`` tensor (NaN where a head was not measured)."""
        out = torch.full((self.n_layers, self.n_heads), float("nan"))
        for name, score in self.scores().items():
            head = Head.parse(name)
            out[head.layer, head.head] = score
        return out

    def top(self, k: int, *, by: Optional[str] = None, **renamed: Any) -> list[tuple[str, float]]:
        """The `k` best-ranked measured heads, best first: by score (``by="signed"``: the heads that help most)
        or by |score| (``by="absolute"``: a head that hurts counts as much as one that helps). `by` has no
        default: the two rankings differ, and every ranking in the library names which it is."""
        if "by_magnitude" in renamed:
            raise RenamedOptionError("top", "by_magnitude", 'by="absolute" (or by="signed")')
        if renamed:
            raise TypeError(f"top() got unexpected keyword arguments {sorted(renamed)}")
        _check_count(k, "heads")
        key = _rank_key(by)
        return sorted(self.scores().items(), key=lambda item: key(item[1]), reverse=True)[:k]

    def prune(self, threshold: float) -> "HeadGraph":
        """A copy keeping edges with ``|score| >= threshold`` and the heads that either score that much
        themselves or touch a kept edge."""
        if threshold < 0:
            raise InvalidOptionError(f"threshold must be >= 0; got {threshold}")
        edges = [(u, v) for u, v, s in self.nx.edges(data="score") if s is not None and abs(s) >= threshold]
        touched = {n for edge in edges for n in edge}
        scores = self.scores()
        scores.update({n: self.nx.nodes[n].get("score") or 0.0 for n in self.mlps()})
        keep = [n for n in self.nx.nodes if self.nx.nodes[n].get("kind") not in ("head", "mlp")
                or abs(scores.get(n, 0.0)) >= threshold or n in touched]
        sub = self.nx.subgraph(keep).copy()
        sub.remove_edges_from([edge for edge in list(sub.edges) if edge not in set(edges)])
        return HeadGraph(sub)

    # --- circuits from scored edges ------------------------------------------------------------------
    # Ranking is explicit: by="absolute" ranks edges by |score| (an edge that hurts the behaviour counts
    # as much as one that helps), by="signed" by score (only edges that help). Every selection is pruned:
    # a node kept must lie on a path embed -> ... -> logits through the selected edges.
    def top_edges(self, k: int, *, by: Optional[str] = None, effect: Optional[str] = None) -> list[tuple[str, str, float]]:
        """The `k` best-ranked scored edges, best first, as (sender, receiver, score); `effect` picks one kind
        of edge where the graph's edges measure different effects."""
        _check_count(k, "edges")
        key = _rank_key(by)
        return sorted(self._scored_edges(effect), key=lambda edge: key(edge[2]), reverse=True)[:k]

    def threshold_edges(self, threshold: float, *, by: Optional[str] = None,
                        effect: Optional[str] = None) -> list[tuple[str, str, float]]:
        """Scored edges with |score| >= `threshold` (by="absolute") or score >= `threshold` (by="signed")."""
        key = _rank_key(by)
        edges = [e for e in self._scored_edges(effect) if key(e[2]) >= threshold]
        return sorted(edges, key=lambda e: key(e[2]), reverse=True)

    def greedy_edges(self, k: int, *, by: Optional[str] = None, effect: Optional[str] = None) -> list[tuple[str, str, float]]:
        """`k` edges grown from ``"logits"`` backwards: each step adds the best-ranked edge whose receiver is
        already in the circuit (its sender joins the circuit), in the order they were added."""
        _check_count(k, "edges")
        return _greedy(self._scored_edges(effect), k, _rank_key(by), lambda edge: edge)

    def subgraph(self, edges: list[tuple[str, str, float]], **selection: Any) -> "HeadGraph":
        """The subgraph of `edges` (nodes keep their attributes), pruned of nodes with no path from
        ``"embed"`` or none to ``"logits"`` through those edges; `selection` (how the edges were chosen)
        goes into ``meta["selection"]``. (A circuit to evaluate, edges with their q/k/v inputs: `circuit`.)"""
        sub = nx.DiGraph()
        sub.add_edges_from((u, v) for u, v, _ in edges)
        keep = set()
        if EMBED in sub and LOGITS in sub:
            keep = (nx.descendants(sub, EMBED) | {EMBED}) & (nx.ancestors(sub, LOGITS) | {LOGITS})
        out = nx.DiGraph()
        out.graph.update({k: v for k, v in self.nx.graph.items() if k != "meta"})
        out.graph["meta"] = {**self.meta, "selection": {**selection, "edges_chosen": len(edges)}}
        for special in (EMBED, LOGITS):
            out.add_node(special, **self.nx.nodes[special])
        out.add_nodes_from((node, self.nx.nodes[node]) for node in keep)
        out.add_edges_from((u, v, self.nx.edges[u, v]) for u, v, _ in edges if u in keep and v in keep)
        return HeadGraph(out)

    def scored_edges(self, effect: Optional[str] = None, *, positional: bool = False) -> list[tuple[Edge, float]]:
        """Every scored edge as (`Edge`, score), a head receiver's expanded into its q, k and v inputs: each input's
        own score where the engine measured it (``score_q``, ``score_k``, ``score_v``), else the edge's score for
        each input it covers (``inputs``, e.g. ``"q+k+v"``; all three when the edge does not say). Unscored edges
        (no score, NaN) are left out; `effect` as in `top_edges`. `positional`: each of those edges at each position
        it was scored at (``positions`` or, per input, ``positions_q/_k/_v``; `position_kind`), as
        (`Edge` with its ``position``, score); a graph scored without positions is a typed error."""
        # each label read once (a graph's few labels; SmolLM2 with 6 spans has ~800k edges at positions)
        labels = {label: position_of(label) for label in self.position_kind()[1]} if positional else {}
        out = []
        nodes: dict[str, Node] = {}  # each name parsed once: a large model's graph has ~10^5 edges
        for u, v, score in self._scored_edges(effect):
            for name in (u, v):
                if name not in nodes:
                    nodes[name] = parse_node(name)
            sender, receiver = nodes[u], nodes[v]
            data = self.nx.edges[u, v]
            if not isinstance(receiver, Head):
                out += _at_positions(Edge(sender, receiver), score, data.get("positions"), positional, labels)
                continue
            Edge(sender, receiver, INPUTS[0])  # the pair checked once (a typed error for a backward edge) ...
            covered = str(data.get("inputs") or "+".join(INPUTS)).split("+")
            for i in INPUTS:  # ... and its q, k, v edges built unchecked
                own = data.get(f"score_{i}")
                if own is not None and not math.isnan(own):
                    out += _at_positions(Edge.between(sender, receiver, i), float(own), data.get(f"positions_{i}"),
                                         positional, labels)
                elif i in covered and own is None:
                    out += _at_positions(Edge.between(sender, receiver, i), score, None, positional, labels)
        return out

    def position_kind(self) -> tuple[str, list[str]]:
        """How this graph's edges were scored per position: (``"tokens"`` or ``"spans"``, the labels), from
        ``meta["positions"]``; `InvalidOptionError` for a graph scored without positions."""
        record = self.meta.get("positions")
        if not record:
            raise InvalidOptionError(f"this graph ({self.meta.get('engine', 'engine not recorded')}) has no scores per "
                                     "position; expected a graph from an engine run with positions='tokens' or "
                                     "'spans' (e.g. edge_attribution), or positional=False")
        return record["kind"], list(record["labels"])

    def edge_total(self) -> int:
        """How many edges the whole model's graph has (MIB's count: every sender to every later receiver, a head's
        q, k and v apart), for this graph's shape: with MLPs where the graph has MLP nodes."""
        cfg = SimpleNamespace(n_layers=self.n_layers, n_heads=self.n_heads, attn_only=not self.mlps())
        return len(all_edges(cfg))

    def circuit(self, *args: Any, k: Optional[int] = None, fraction: Optional[float] = None, by: Optional[str] = None,
                greedy: bool = False, effect: Optional[str] = None, total: Optional[int] = None,
                positional: bool = False) -> frozenset[Edge]:
        """A circuit: a set of `Edge`s chosen by score, as the MIB benchmark chooses them. `k` edges, or a
        `fraction` of `total` (default `edge_total`; MIB's ``int(fraction * total)``), ranked `by` ``"signed"`` or
        ``"absolute"`` (|score|), among `scored_edges` (unscored edges never chosen): the top ones, or with `greedy`
        grown from the read-out backwards (`greedy_edges`, on q/k/v edges); then pruned of every edge that lies on
        no input -> read-out path through the chosen edges. `positional`: the same among the edges at each position
        (`scored_edges(positional=True)`; `total` defaults to `edge_total` times the number of positions), pruned on
        the graph of their edges."""
        if args:
            raise RenamedError("HeadGraph", "circuit(edges)", "graph.subgraph(edges) for a HeadGraph of chosen edges, "
                               "or graph.circuit(k=... | fraction=..., by=...) for a set of Edges")
        if (k is None) == (fraction is None):
            raise MissingOptionError(f"circuit(k={k!r}, fraction={fraction!r}): give exactly one of k (a number of "
                                     "edges) and fraction (of the model's edges, in [0, 1])")
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
                raise InvalidOptionError(f"fraction={fraction!r}; expected a fraction of the edges in [0, 1]")
            every = self.edge_total() * (len(self.position_kind()[1]) if positional else 1)
            k = int(fraction * (every if total is None else total))
        _check_count(k, "edges")
        key = _rank_key(by)
        scored = self.scored_edges(effect, positional=positional)
        chosen = (_greedy(scored, k, key, lambda e: (e[0].sender, e[0].receiver, e[1])) if greedy else
                   sorted(scored, key=lambda e: key(e[1]), reverse=True)[:k])
        return pruned(edge for edge, _ in chosen)

    def effects(self) -> dict[Optional[str], int]:
        """How many edges measure each effect (`EFFECTS`; None: edges that do not say)."""
        return dict(Counter(effect for _, _, effect in self.nx.edges(data="effect")))

    def _scored_edges(self, effect: Optional[str] = None) -> list[tuple[str, str, float]]:
        """(sender, receiver, score) of the scored edges measuring `effect`; without `effect`, every scored
        edge, refused (typed error) when they measure different effects."""
        if effect is not None and effect not in EFFECTS:
            raise InvalidOptionError(f"effect={effect!r}; expected one of {EFFECTS}")
        edges = [(u, v, d["score"], d.get("effect")) for u, v, d in self.nx.edges(data=True)
                 if d.get("score") is not None and not math.isnan(d["score"])]
        kinds = Counter(e[3] for e in edges)
        if effect is None and len(kinds) > 1:
            raise MixedEffectsError(f"this graph's edges measure different effects ({dict(kinds)}); selecting among "
                                    f"them would mix units: pass effect= one of {sorted(k for k in kinds if k)}")
        return [e[:3] for e in edges if effect is None or e[3] == effect]

    # --- persistence --------------------------------------------------------------------------------
    def to_json(self, path: Union[str, Path]) -> Path:
        """Write networkx node-link JSON (readable by plain ``networkx.node_link_graph``); tuples are kept
        as ``{"__tuple__": [...]}`` so that `from_json` returns an equal graph."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self._node_link_text())
        return path

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "HeadGraph":
        return cls._from_node_link_text(Path(path).read_text())

    def to_mib(self, path: Union[str, Path], *, circuit: Any = None, d_model: Optional[int] = None) -> Path:
        """Write the MIB benchmark's graph JSON (`circuits.mib.write`): every scored edge, q/k/v apart, with ``score``
        and ``in_graph`` (True for the edges of `circuit`); MIB's loader needs `d_model`."""
        from circuits import mib

        return mib.write(self, path, circuit=circuit, d_model=d_model)

    @classmethod
    def from_mib(cls, path: Union[str, Path]) -> "HeadGraph":
        """Read the MIB benchmark's graph JSON (`circuits.mib.read`; the circuit it marks:
        `circuits.mib.read_circuit`)."""
        from circuits import mib

        return mib.read(path)

    def _node_link_text(self) -> str:
        return json.dumps(_encode(nx.node_link_data(self.nx, edges="edges")), indent=1, default=_jsonable)

    @classmethod
    def _from_node_link_text(cls, text: str) -> "HeadGraph":
        return cls(nx.node_link_graph(json.loads(text, object_hook=_decode), directed=True, edges="edges"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeadGraph):
            return NotImplemented
        mine = (self.nx.graph, dict(self.nx.nodes(data=True)), {(u, v): d for u, v, d in self.nx.edges(data=True)})
        theirs = (other.nx.graph, dict(other.nx.nodes(data=True)),
                  {(u, v): d for u, v, d in other.nx.edges(data=True)})
        return _same(mine, theirs)

    def __repr__(self) -> str:
        top = ", ".join(f"{n}={s:.3f}" for n, s in self.top(3, by="absolute"))
        return f"HeadGraph({len(self.heads())} heads, {self.nx.number_of_edges()} edges; top by |score|: {top})"

    def draw(self, path: Optional[Union[str, Path]] = None, title: Optional[str] = None, k: int = 8,
             by: str = "absolute", edges: int = 12) -> Any:
        """A heatmap of head scores (the top-`k` heads ranked `by` outlined: ``"absolute"``: by |score|, so heads
        that hurt show too; ``"signed"``) beside the top-`edges` edges as a graph, layers from the input (left) to
        the read-out (right); titled engine · task · model unless `title` is given, with what the scores mean
        (``meta["score"]``) underneath; saved to `path` if given. `circuits discover` writes this same figure."""
        from circuits._drawing import draw_graph

        return draw_graph(self, path=path, title=title, k=k, by=by, edges=edges)

    def to_html(self, path: Union[str, Path], **options: Any) -> Path:
        """An interactive view of this graph in one self-contained HTML file (`circuits.view.to_html`); options
        ``curve`` (its faithfulness curve, e.g. an `EdgeCurve`), ``default_edges``, ``by``, ``positional_edges``,
        ``title``; returns the path."""
        from circuits import view

        if "curve" in options:
            options["curves"] = [options.pop("curve")]
        return view.to_html(self, path, **options)

    def _repr_html_(self) -> str:
        """Jupyter shows a graph as its interactive view."""
        from circuits import view

        return view.notebook_html(self)


RANKINGS = ("absolute", "signed")


def _rank_key(by: Optional[str]) -> Any:
    """A score -> sort key for `by`; a missing or unknown `by` is a typed error listing the choices."""
    if by is None:
        raise MissingOptionError(f"by is required; expected one of {RANKINGS} (rank by |score| or by score)")
    if by not in RANKINGS:
        raise InvalidOptionError(f"by={by!r}; expected one of {RANKINGS} (rank by |score| or by score)")
    return abs if by == "absolute" else (lambda score: score)


def pruned(edges: Any) -> frozenset[Edge]:
    """The edges that lie on some input -> read-out path through `edges` (MIB's prune: nodes without an incoming or
    an outgoing edge removed, and their edges, until nothing changes)."""
    edges = frozenset(edges)
    flow = nx.DiGraph((e.sender.name, e.receiver.name) for e in edges)
    if EMBED not in flow or LOGITS not in flow:
        return frozenset()
    keep = (nx.descendants(flow, EMBED) | {EMBED}) & (nx.ancestors(flow, LOGITS) | {LOGITS})
    return frozenset(e for e in edges if e.sender.name in keep and e.receiver.name in keep)


def _at_positions(edge: Edge, score: float, positions: Optional[dict[str, float]], positional: bool,
                  labels: dict[str, Any]) -> list[tuple[Edge, float]]:
    """[(edge, score)], or with `positional` the edge at each of its `positions` (none when it has none); the edge
    is checked already, and `labels` holds the graph's labels read as positions (any other is read here)."""
    if not positional:
        return [(edge, score)]
    return [(Edge.between(edge.sender, edge.receiver, edge.input,
                          labels[label] if label in labels else position_of(label)), float(value))
            for label, value in (positions or {}).items() if not math.isnan(value)]


def _greedy(edges: list[Any], k: int, key: Any, parts: Any) -> list[Any]:
    """`k` of `edges` grown from the read-out backwards: each step takes the best-ranked edge into a node already
    in the circuit (MIB's ``apply_greedy``), whose sender joins; `parts(edge)` is (sender, receiver, score)."""
    into: dict[str, list[Any]] = {}
    for edge in edges:
        into.setdefault(str(parts(edge)[1]), []).append(edge)
    chosen: list[Any] = []
    inside, frontier, tie = {LOGITS}, [], 0

    def push_into(node: str) -> None:
        nonlocal tie
        for edge in into.get(node, []):
            heapq.heappush(frontier, (-key(parts(edge)[2]), tie, edge))
            tie += 1

    push_into(LOGITS)
    while frontier and len(chosen) < k:
        edge = heapq.heappop(frontier)[2]
        chosen.append(edge)
        sender = str(parts(edge)[0])
        if sender not in inside:
            inside.add(sender)
            push_into(sender)
    return chosen


def _check_count(k: int, what: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidOptionError(f"k={k!r}; expected a non-negative number of {what}")


def _encode(value: Any) -> Any:
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: dict[str, Any]) -> Any:
    return tuple(value[_TUPLE]) if set(value) == {_TUPLE} else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, set):
        return sorted(value)
    return str(value)


def _same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN, through dicts, lists and tuples."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
