"""HeadGraph: a thin wrapper over a networkx.DiGraph of attention heads.

Head nodes are ``"L{layer}H{head}"`` with attributes ``layer``, ``head``, ``score``; the special nodes
``"embed"`` and ``"logits"`` stand for the input and the output; edges carry ``score``. ``meta`` (engine
and options, task, model, seed, version) lives in ``graph.nx.graph`` so it travels with the JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Union

import networkx as nx
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.errors import InvalidOptionError, UnknownNameError

EMBED, LOGITS = "embed", "logits"
_HEAD = re.compile(r"^L(\d+)H(\d+)$")


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def parse_head(name: str) -> tuple[int, int]:
    """``"L1H3"`` -> ``(1, 3)``; anything else raises `UnknownNameError`."""
    match = _HEAD.match(name) if isinstance(name, str) else None
    if match is None:
        raise UnknownNameError("head", name, ["L{layer}H{head}, e.g. 'L1H3'"])
    return int(match.group(1)), int(match.group(2))


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
                graph.add_head(layer, head, float(scores[layer, head]), **extras)
                graph.nx.add_edge(head_name(layer, head), LOGITS, score=float(scores[layer, head]))
        return graph

    def add_head(self, layer: int, head: int, score: float, **attributes: Any) -> str:
        name = head_name(layer, head)
        self.nx.add_node(name, kind="head", layer=layer, head=head, score=score, **attributes)
        return name

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

    def scores(self) -> dict[str, float]:
        """Head name -> score."""
        return {n: self.nx.nodes[n]["score"] for n in self.heads()}

    def matrix(self) -> Float[Tensor, "n_layers n_heads"]:
        """Scores as a ``[n_layers, n_heads]`` tensor (NaN where a head has no node)."""
        out = torch.full((self.n_layers, self.n_heads), float("nan"))
        for name, score in self.scores().items():
            out[parse_head(name)] = score
        return out

    def top(self, k: int, by_magnitude: bool = False) -> list[tuple[str, float]]:
        """The `k` highest-scoring heads, best first (by absolute score with `by_magnitude`)."""
        key = (lambda item: abs(item[1])) if by_magnitude else (lambda item: item[1])
        return sorted(self.scores().items(), key=key, reverse=True)[:k]

    def prune(self, threshold: float) -> "HeadGraph":
        """A copy keeping heads with ``|score| >= threshold`` and edges with ``|score| >= threshold``."""
        if threshold < 0:
            raise InvalidOptionError(f"threshold must be >= 0; got {threshold}")
        keep = [n for n in self.nx.nodes if self.nx.nodes[n].get("kind") != "head"
                or abs(self.nx.nodes[n]["score"]) >= threshold]
        sub = self.nx.subgraph(keep).copy()
        sub.remove_edges_from([(u, v) for u, v, s in sub.edges(data="score") if s is not None and abs(s) < threshold])
        return HeadGraph(sub)

    # --- persistence --------------------------------------------------------------------------------
    def to_json(self, path: Union[str, Path]) -> Path:
        """Write networkx node-link JSON (readable by plain ``networkx.node_link_graph``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(nx.node_link_data(self.nx, edges="edges"), indent=1, default=_jsonable))
        return path

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "HeadGraph":
        data = json.loads(Path(path).read_text())
        return cls(nx.node_link_graph(data, directed=True, edges="edges"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeadGraph):
            return NotImplemented
        return (self.nx.graph == other.nx.graph and dict(self.nx.nodes(data=True)) == dict(other.nx.nodes(data=True))
                and {(u, v): d for u, v, d in self.nx.edges(data=True)}
                == {(u, v): d for u, v, d in other.nx.edges(data=True)})

    def __repr__(self) -> str:
        top = ", ".join(f"{n}={s:.3f}" for n, s in self.top(3))
        return f"HeadGraph({len(self.heads())} heads, {self.nx.number_of_edges()} edges; top: {top})"

    def draw(self, path: Optional[Union[str, Path]] = None, title: Optional[str] = None, k: int = 8) -> Any:
        """A heatmap of head scores beside the graph of the top-`k` heads; saved to `path` if given."""
        from circuits.drawing import draw_graph

        return draw_graph(self, path=path, title=title, k=k)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)

