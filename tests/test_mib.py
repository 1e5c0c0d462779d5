"""MIB's graph JSON (the EAP-IG / MIB circuit-track format): our graphs written and read back equal, a file written
by hand in their format read, bad files refused naming the file and the value, and our edge set equal to theirs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from circuits import Edge, HeadGraph, nodes
from circuits.errors import GraphFileError, MissingOptionError
from circuits.mib import mib_edge_name, read_circuit
from tests.references import random_edge_graph


def mib_edge_names(n_layers, n_heads):
    """MIB's Graph.from_model, in words: a residual stream of nodes so far (starting with the input); per layer every
    node so far feeds each head's q, k and v, then every node so far and this layer's heads feed its MLP; at the end
    every node feeds the logits."""
    stream, names = ["input"], set()
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        names |= {f"{u}->{v}<{i}>" for u in stream for v in heads for i in "qkv"}
        stream += heads
        names |= {f"{u}->m{layer}" for u in stream}
        stream.append(f"m{layer}")
    return names | {f"{u}->logits" for u in stream}


def test_our_edges_are_mibs_edges():
    cfg = SimpleNamespace(n_layers=3, n_heads=2, attn_only=False)
    assert {mib_edge_name(e) for e in nodes.all_edges(cfg)} == mib_edge_names(3, 2)


def engine_graph(seed=0):
    """A graph as edge attribution writes it: every edge of a 2-layer, 2-head model with MLPs, q/k/v apart."""
    g = torch.Generator().manual_seed(seed)
    graph = random_edge_graph(SimpleNamespace(n_layers=2, n_heads=2, attn_only=False), g,
                              {"engine": "edge_attribution", "options": {"steps": (1, 2)}})
    for name in ["L0H0", "L0H1", "L1H0", "L1H1", "M0", "M1"]:
        graph.add_node(name, float(torch.randn(1, generator=g)))
    return graph


def test_a_graph_written_as_mib_json_reads_back_equal(tmp_path):
    graph = engine_graph()
    circuit = graph.circuit(k=12, by="absolute")
    path = graph.to_mib(tmp_path / "graph.json", circuit=circuit, d_model=16)
    assert HeadGraph.from_mib(path) == graph and read_circuit(path) == circuit == frozenset() | circuit
    data = json.loads(path.read_text())
    assert data["cfg"] == {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 16}
    assert set(data["edges"]) == mib_edge_names(2, 2)
    assert {name for name, e in data["edges"].items() if e["in_graph"]} == {mib_edge_name(e) for e in circuit}
    assert data["edges"]["input->a1.h0<k>"]["score"] == graph.nx.edges["embed", "L1H0"]["score_k"]
    assert data["nodes"]["a0.h1"]["score"] == graph.nx.nodes["L0H1"]["score"] and data["nodes"]["logits"]["in_graph"]
    # MIB's own fields alone (as their tools would rewrite the file) carry the scores, the circuit and node scores
    del data["tl_circuits"]
    (tmp_path / "theirs.json").write_text(json.dumps(data))
    theirs = HeadGraph.from_mib(tmp_path / "theirs.json")
    assert dict(theirs.scored_edges()) == pytest.approx(dict(graph.scored_edges()))
    assert theirs.scores() == pytest.approx(graph.scores()) and read_circuit(tmp_path / "theirs.json") == circuit
    assert theirs.to_mib(tmp_path / "again.json") and read_circuit(tmp_path / "again.json") == circuit  # d_model kept


def test_a_file_in_their_format_loads(tmp_path):
    """Hand-written as EAP-IG's Graph.to_json writes it (1 layer, 2 heads, an MLP; node scores absent)."""
    edges = {name: {"score": 0.0, "in_graph": False} for name in mib_edge_names(1, 2)}
    edges.update({"input->a0.h1<v>": {"score": 0.75, "in_graph": True},
                  "a0.h1->logits": {"score": -1.5, "in_graph": True},
                  "a0.h0->m0": {"score": 0.25, "in_graph": False}, "input->a0.h1<q>": {"score": 0.5, "in_graph": False}})
    nodes_ = {name: {"in_graph": name in ("input", "a0.h1", "logits")}
              for name in ("input", "a0.h0", "a0.h1", "m0", "logits")}
    path = tmp_path / "eap.json"
    path.write_text(json.dumps({"cfg": {"n_layers": 1, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8,
                                        "d_head": 4}, "nodes": nodes_, "edges": edges}))
    graph = HeadGraph.from_mib(path)
    assert (graph.n_layers, graph.n_heads) == (1, 2) and sorted(graph.heads()) == ["L0H0", "L0H1"]
    assert graph.nx.edges["embed", "L0H1"]["score_v"] == 0.75 and graph.nx.edges["embed", "L0H1"]["score"] == 1.25
    assert graph.nx.edges["L0H1", "logits"]["score"] == -1.5 and graph.nx.edges["L0H0", "M0"]["score"] == 0.25
    assert read_circuit(path) == {Edge("embed", "L0H1", "v"), Edge("L0H1", "logits")}
    assert graph.circuit(k=2, by="absolute") == {Edge("embed", "L0H1", "v"), Edge("L0H1", "logits")}
    assert len(graph.scored_edges()) == len(edges)


@pytest.mark.parametrize("content, match", [
    ("not json", "not JSON"),
    ({"cfg": {"n_layers": 1, "n_heads": 2}, "nodes": {}}, r"missing \['edges'\]"),
    ({"cfg": {"n_layers": 0, "n_heads": 2}, "nodes": {}, "edges": {}}, r"cfg\['n_layers'\] = 0"),
    ({"cfg": {"n_layers": 1, "n_heads": 2}, "nodes": {}, "edges": {"a0.h0=>logits": {"score": 1}}}, "'a0.h0=>logits'"),
    ({"cfg": {"n_layers": 1, "n_heads": 2}, "nodes": {}, "edges": {"a0.h0->a0.h1<q>": {"score": 1}}}, "does not come"),
    ({"cfg": {"n_layers": 1, "n_heads": 2}, "nodes": {}, "edges": {"input->logits": {"in_graph": True}}}, "'score'"),
    ({"cfg": {"n_layers": 1, "n_heads": 2}, "nodes": {"b0": {}}, "edges": {}}, "'b0'"),
])
def test_bad_files_are_refused_naming_the_file_and_the_value(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(GraphFileError, match=match) as error:
        HeadGraph.from_mib(path)
    assert "bad.json" in str(error.value)


def test_writing_needs_d_model(tmp_path):
    with pytest.raises(MissingOptionError, match="d_model"):
        engine_graph().to_mib(tmp_path / "g.json")
