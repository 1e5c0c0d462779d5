"""The graph JSON of the MIB benchmark's circuit track (hannamw/EAP-IG's ``Graph.to_json`` / ``Graph.from_json``).

    {"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 64},
     "nodes": {"input": {"in_graph": true}, "a0.h1": {"in_graph": true, "score": 0.3}, "m0": {...}, "logits": {...}},
     "edges": {"input->a0.h1<q>": {"score": 0.12, "in_graph": true}, "a0.h1->logits": {...}, ...}}

Nodes are ``input`` (our ``embed``), ``a{layer}.h{head}`` (``L{layer}H{head}``), ``m{layer}`` (``M{layer}``) and
``logits``; an edge into a head names the input it reads (``<q>``, ``<k>``, ``<v>``). ``in_graph`` marks a circuit.
`read` gives a HeadGraph whose head receivers carry their q/k/v scores apart (``score_q``, ...; the edge's score is
their sum, as edge attribution's) and the file's config in ``meta["mib"]``; `read_circuit` gives the circuit it
marks. `write` writes our graph in that shape (every scored edge, q/k/v apart; ``in_graph`` for the edges of a circuit), plus this
library's own record of the graph under ``"tl_circuits"`` (ignored by MIB's loader), so that a graph written here
reads back equal.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from collections.abc import Iterable
from typing import Any, Optional, Union

from circuits.errors import GraphFileError, InvalidEdgeError, MissingOptionError
from circuits.nodes import EMBED, INPUTS, LOGITS, MLP, Edge, Head, Input, Node, Readout, parse_node

_MIB_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_MIB_MLP = re.compile(r"^m(\d+)$")
_MIB_EDGE = re.compile(r"^([^<>]+)->([^<>]+?)(?:<([qkv])>)?$")
OURS = "tl_circuits"  # our own record in the file (MIB's loader reads only cfg, nodes and edges)


def mib_name(node: Union[Node, str]) -> str:
    """Our node (or its name) in MIB's spelling: ``embed`` -> ``input``, ``L1H3`` -> ``a1.h3``, ``M2`` -> ``m2``."""
    node = parse_node(node)
    if isinstance(node, Input):
        return "input"
    if isinstance(node, Head):
        return f"a{node.layer}.h{node.head}"
    if isinstance(node, MLP):
        return f"m{node.layer}"
    return LOGITS


def our_node(name: str) -> Node:
    """A node from MIB's spelling; anything else raises `GraphFileError` naming it."""
    if name == "input":
        return Input()
    if name == LOGITS:
        return Readout()
    head, mlp = _MIB_HEAD.match(name), _MIB_MLP.match(name)
    if head:
        return Head(int(head.group(1)), int(head.group(2)))
    if mlp:
        return MLP(int(mlp.group(1)))
    raise GraphFileError(f"node {name!r}; expected MIB's 'input', 'a{{layer}}.h{{head}}', 'm{{layer}}' or 'logits'")


def mib_edge_name(edge: Edge) -> str:
    return f"{mib_name(edge.sender)}->{mib_name(edge.receiver)}" + (f"<{edge.input}>" if edge.input else "")


def our_edge(name: str) -> Edge:
    match = _MIB_EDGE.match(name)
    if match is None:
        raise GraphFileError(f"edge {name!r}; expected MIB's 'sender->receiver' or 'sender->receiver<q|k|v>'")
    try:
        return Edge(our_node(match.group(1)), our_node(match.group(2)), match.group(3))
    except InvalidEdgeError as error:
        raise GraphFileError(f"edge {name!r}: {error}") from None


def write(graph: Any, path: Union[str, Path], *, circuit: Optional[Iterable[Edge]] = None,
          d_model: Optional[int] = None) -> Path:
    """`graph` as MIB's graph JSON at `path`: every scored edge (`HeadGraph.scored_edges`), ``in_graph`` for the edges
    of `circuit` (default: the circuit read from a MIB file, else none), node scores where measured. MIB's loader
    needs ``d_model`` (`d_model`, else the one read from a MIB file). MIB's format has no positions: a positional
    graph is written with its plain scores (its per-position values stay in our own record, so it reads back
    equal), and a `circuit` with edges at positions is refused (`InvalidEdgeError`) rather than merged."""
    mib = graph.meta.get("mib", {})
    d_model = d_model if d_model is not None else mib.get("cfg", {}).get("d_model")
    if d_model is None:
        raise MissingOptionError("d_model is required: MIB's Graph.from_json builds its graph from cfg['d_model'] "
                                 "(pass d_model=model.cfg.d_model)")
    chosen = {Edge.parse(e) for e in (mib.get("in_graph", []) if circuit is None else circuit)}
    positional = sorted(str(edge) for edge in chosen if edge.position is not None)
    if positional:
        raise InvalidEdgeError(f"MIB's graph JSON has no positions; the circuit has {len(positional)} edges at "
                               f"positions, e.g. {positional[0]!r}: expected plain edges (for the edges at any "
                               "position: {edge.plain for edge in circuit})")
    scored = graph.scored_edges()
    edges = {mib_edge_name(edge): {"score": score, "in_graph": edge in chosen} for edge, score in scored}
    missing = chosen - {edge for edge, _ in scored}
    edges.update({mib_edge_name(e): {"score": 0.0, "in_graph": True} for e in sorted(missing, key=lambda e: e.key)})
    inside = {EMBED, LOGITS} | {node.name for edge in chosen for node in (edge.sender, edge.receiver)}
    nodes = {"input": {"in_graph": EMBED in inside}}
    for name in [*graph.heads(), *graph.mlps()]:
        nodes[mib_name(name)] = {"in_graph": name in inside}
        score = graph.nx.nodes[name].get("score")
        if score is not None and not math.isnan(score):
            nodes[mib_name(name)]["score"] = float(score)
    nodes[LOGITS] = {"in_graph": True}
    cfg = {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": False, "d_model": int(d_model)}
    ours = json.loads(graph._node_link_text())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cfg": cfg, "nodes": nodes, "edges": edges, OURS: ours}))
    return path


def read(path: Union[str, Path]) -> Any:
    """A HeadGraph from MIB's graph JSON at `path` (our own record, where the file has it, wins: a graph written by
    `write` reads back equal). Bad content raises `GraphFileError` naming the file, the key and the value."""
    from circuits.graph import HeadGraph

    path = Path(path)
    data = _load(path)
    if OURS in data:
        return HeadGraph._from_node_link_text(json.dumps(data[OURS]))
    cfg = data["cfg"]
    graph = HeadGraph(n_layers=_int(cfg, "n_layers", path), n_heads=_int(cfg, "n_heads", path),
                      meta={"engine": None, "score": f"edge scores as given in the MIB graph file {path.name}"})
    pairs: dict[tuple[str, str], dict[Optional[str], float]] = {}
    in_graph = []
    for name, info in data["edges"].items():
        edge = _edge_in(path, name)
        try:
            score = float(info["score"])
        except (KeyError, TypeError, ValueError) as error:
            raise GraphFileError(f"{path}: edges[{name!r}] = {info!r} ({type(error).__name__}: {error}); expected "
                                 "{'score': number, 'in_graph': bool}") from None
        pairs.setdefault((edge.sender.name, edge.receiver.name), {})[edge.input] = score
        if info.get("in_graph"):
            in_graph.append(edge.name)
    for name, info in data["nodes"].items():
        node = _node_in(path, name)
        if isinstance(node, (Head, MLP)):
            graph.add_node(node, info.get("score") if isinstance(info, dict) else None)
    for (sender, receiver), scores in pairs.items():
        if None in scores:
            graph.add_edge(sender, receiver, scores[None], effect="direct")
        else:
            inputs = [i for i in INPUTS if i in scores]
            graph.add_edge(sender, receiver, sum(scores[i] for i in inputs), effect="direct", inputs="+".join(inputs),
                           **{f"score_{i}": scores[i] for i in inputs})
    graph.meta["mib"] = {"cfg": dict(cfg), "in_graph": sorted(in_graph)}
    return graph


def read_circuit(path: Union[str, Path]) -> frozenset:
    """The circuit a MIB graph file marks: its edges with ``in_graph`` true."""
    path = Path(path)
    return frozenset(_edge_in(path, name) for name, info in _load(path)["edges"].items()
                     if isinstance(info, dict) and info.get("in_graph"))


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GraphFileError(f"{path}: no such file; expected a MIB graph JSON file") from None
    except json.JSONDecodeError as error:
        raise GraphFileError(f"{path}: not JSON ({error}); expected a MIB graph JSON file") from None
    missing = [key for key in ("cfg", "nodes", "edges") if not isinstance(data, dict) or key not in data]
    if missing:
        raise GraphFileError(f"{path}: missing {missing}; expected MIB's graph JSON with keys 'cfg', 'nodes', 'edges'")
    return data


def _int(cfg: dict, key: str, path: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GraphFileError(f"{path}: cfg[{key!r}] = {value!r}; expected a positive integer")
    return value


def _edge_in(path: Path, name: str) -> Edge:
    try:
        return our_edge(name)
    except GraphFileError as error:
        raise GraphFileError(f"{path}: edges: {error}") from None


def _node_in(path: Path, name: str) -> Node:
    try:
        return our_node(name)
    except GraphFileError as error:
        raise GraphFileError(f"{path}: nodes: {error}") from None
