"""HeadGraph: a thin wrapper over a networkx.DiGraph of attention heads.

Head nodes are named ``"L{layer}H{head}"`` (a `Head` spells and parses them) with attributes ``kind``,
``layer``, ``head`` and, where the engine measured one, ``score``; a head the engine did not measure has
no ``score`` (NaN in `matrix`). The special nodes ``"embed"`` and ``"logits"`` stand for the input and
the output; MLP nodes ``"M{layer}"`` (kind ``"mlp"``, from engines that score MLPs) may join them. Edges
carry ``score``. `heads`, `scores`, `matrix` and `top` are about heads only. ``meta`` (engine and options, task, model, seed, version, and in
``meta["score"]`` what node and edge scores mean) lives in ``graph.nx.graph`` so it travels with the JSON.
Engines build graphs through `add_head` and `add_edge`, never through networkx directly.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import networkx as nx
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.errors import InvalidOptionError, MissingOptionError, RenamedOptionError, UnknownNameError

EMBED, LOGITS = "embed", "logits"
_HEAD = re.compile(r"^L(\d+)H(\d+)$")
_MLP = re.compile(r"^M(\d+)$")
_TUPLE = "__tuple__"  # JSON has no tuples: they are written as {"__tuple__": [...]} and read back as tuples


@dataclass(frozen=True, order=True)
class Head:
    """One attention head, ordered by layer then head; ``str(Head(1, 3)) == "L1H3"``."""

    layer: int
    head: int

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: Union[str, "Head"]) -> "Head":
        """``"L1H3"`` -> ``Head(1, 3)`` (a `Head` passes through); anything else raises `UnknownNameError`."""
        if isinstance(name, Head):
            return name
        match = _HEAD.match(name) if isinstance(name, str) else None
        if match is None:
            raise UnknownNameError("head", name, ["L{layer}H{head}, e.g. 'L1H3'"])
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def in_model(cls, model: Any, name: Union[str, "Head"], also: tuple[str, ...] = ()) -> "Head":
        """A head name checked against the model: `UnknownNameError` naming it, the valid range and `also`."""
        cfg = model.cfg
        valid = [f"L0H0 .. L{cfg.n_layers - 1}H{cfg.n_heads - 1}", *also]
        try:
            head = cls.parse(name)
        except UnknownNameError:
            raise UnknownNameError("head", name, valid) from None
        if head.layer >= cfg.n_layers or head.head >= cfg.n_heads:
            raise UnknownNameError("head", name, valid)
        return head


def all_heads(model: Any) -> list[Head]:
    """Every head of `model`, layer by layer."""
    return [Head(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]


def head_name(layer: int, head: int) -> str:
    return Head(layer, head).name


def parse_head(name: str) -> tuple[int, int]:
    """``"L1H3"`` -> ``(1, 3)``; anything else raises `UnknownNameError`."""
    head = Head.parse(name)
    return head.layer, head.head


def mlp_name(layer: int) -> str:
    """The MLP node of block `layer`: ``"M{layer}"``."""
    return f"M{layer}"


def mlp_layer(name: object) -> Optional[int]:
    """The layer of an MLP node name (``"M3"`` -> 3), or None if `name` is not one."""
    match = _MLP.match(name) if isinstance(name, str) else None
    return None if match is None else int(match.group(1))


Node = Union[Head, str]


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
                    **node_attributes: Tensor) -> "HeadGraph":
        """One node per head with its score, and an edge head -> ``"logits"`` carrying the same score.
        Extra per-head tensors (``[n_layers, n_heads, ...]``) become node attributes (as lists)."""
        n_layers, n_heads = scores.shape
        graph = cls(n_layers=n_layers, n_heads=n_heads, meta=meta)
        for layer in range(n_layers):
            for head in range(n_heads):
                extras = {k: v[layer, head].tolist() for k, v in node_attributes.items()}
                score = float(scores[layer, head])
                graph.add_head(Head(layer, head), score, **extras)
                graph.add_edge(Head(layer, head), LOGITS, score)
        return graph

    def add_head(self, head: Node, score: Optional[float] = None, **attributes: Any) -> str:
        """Add (or update) a head node; `score` None leaves the head unmeasured."""
        head = Head.parse(head)
        values = dict(kind="head", layer=head.layer, head=head.head, **attributes)
        if score is not None:
            values["score"] = float(score)
        self.nx.add_node(head.name, **values)
        return head.name

    def add_mlp(self, layer: int, score: Optional[float] = None, **attributes: Any) -> str:
        """Add (or update) the MLP node ``"M{layer}"``; `score` None leaves it unmeasured."""
        values = dict(kind="mlp", layer=int(layer), **attributes)
        if score is not None:
            values["score"] = float(score)
        name = mlp_name(layer)
        self.nx.add_node(name, **values)
        return name

    def add_edge(self, sender: Node, receiver: Node, score: float, **attributes: Any) -> tuple[str, str]:
        """An edge scored `score` between heads, MLP nodes ``"M{layer}"``, ``"embed"`` and ``"logits"``;
        head and MLP endpoints are added as unmeasured nodes if missing."""
        names = []
        for node in (sender, receiver):
            if node in (EMBED, LOGITS):
                names.append(node)
                continue
            layer = mlp_layer(node)
            if layer is not None:
                names.append(node if node in self.nx else self.add_mlp(layer))
                continue
            name = Head.parse(node).name
            if name not in self.nx:
                self.add_head(name)
            names.append(name)
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
            out[parse_head(name)] = score
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
    def top_edges(self, k: int, *, by: Optional[str] = None) -> list[tuple[str, str, float]]:
        """The `k` best-ranked scored edges, best first, as (sender, receiver, score)."""
        _check_count(k, "edges")
        key = _rank_key(by)
        return sorted(self._scored_edges(), key=lambda edge: key(edge[2]), reverse=True)[:k]

    def threshold_edges(self, threshold: float, *, by: Optional[str] = None) -> list[tuple[str, str, float]]:
        """Scored edges with |score| >= `threshold` (by="absolute") or score >= `threshold` (by="signed")."""
        key = _rank_key(by)
        return sorted((e for e in self._scored_edges() if key(e[2]) >= threshold), key=lambda e: key(e[2]), reverse=True)

    def greedy_edges(self, k: int, *, by: Optional[str] = None) -> list[tuple[str, str, float]]:
        """`k` edges grown from ``"logits"`` backwards: each step adds the best-ranked edge whose receiver is
        already in the circuit (its sender joins the circuit), in the order they were added."""
        _check_count(k, "edges")
        key, chosen, inside, frontier, tie = _rank_key(by), [], {LOGITS}, [], 0

        def push_into(node: str) -> None:
            nonlocal tie
            for u, v, score in self.nx.in_edges(node, data="score"):
                if score is not None and not math.isnan(score):
                    heapq.heappush(frontier, (-key(score), tie, (u, v, score)))
                    tie += 1

        push_into(LOGITS)
        while frontier and len(chosen) < k:
            edge = heapq.heappop(frontier)[2]
            chosen.append(edge)
            if edge[0] not in inside:
                inside.add(edge[0])
                push_into(edge[0])
        return chosen

    def circuit(self, edges: list[tuple[str, str, float]], **selection: Any) -> "HeadGraph":
        """The subgraph of `edges` (nodes keep their attributes), pruned of nodes with no path from
        ``"embed"`` or none to ``"logits"`` through those edges; `selection` (how the edges were chosen)
        goes into ``meta["selection"]``."""
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

    def _scored_edges(self) -> list[tuple[str, str, float]]:
        return [(u, v, s) for u, v, s in self.nx.edges(data="score") if s is not None and not math.isnan(s)]

    # --- persistence --------------------------------------------------------------------------------
    def to_json(self, path: Union[str, Path]) -> Path:
        """Write networkx node-link JSON (readable by plain ``networkx.node_link_graph``); tuples are kept
        as ``{"__tuple__": [...]}`` so that `from_json` returns an equal graph."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _encode(nx.node_link_data(self.nx, edges="edges"))
        path.write_text(json.dumps(data, indent=1, default=_jsonable))
        return path

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "HeadGraph":
        data = json.loads(Path(path).read_text(), object_hook=_decode)
        return cls(nx.node_link_graph(data, directed=True, edges="edges"))

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
             by: str = "absolute") -> Any:
        """A heatmap of head scores beside the graph of the top-`k` heads ranked `by` (``"absolute"``: by
        |score|, so heads that hurt show too; ``"signed"``), with what the scores mean (``meta["score"]``)
        underneath; saved to `path` if given."""
        from circuits._drawing import draw_graph

        return draw_graph(self, path=path, title=title, k=k, by=by)


RANKINGS = ("absolute", "signed")


def _rank_key(by: Optional[str]) -> Any:
    """A score -> sort key for `by`; a missing or unknown `by` is a typed error listing the choices."""
    if by is None:
        raise MissingOptionError(f"by is required; expected one of {RANKINGS} (rank by |score| or by score)")
    if by not in RANKINGS:
        raise InvalidOptionError(f"by={by!r}; expected one of {RANKINGS} (rank by |score| or by score)")
    return abs if by == "absolute" else (lambda score: score)


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
