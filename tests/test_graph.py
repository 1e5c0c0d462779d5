"""HeadGraph: scores, top, prune, drawing, and a lossless node-link JSON round trip."""

import json

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from circuits.errors import InvalidOptionError, UnknownNameError
from circuits.graph import HeadGraph, parse_head

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
leaves = st.one_of(st.integers(-1000, 1000), st.text(max_size=8), st.booleans(), st.none(), finite,
                   st.just(float("nan")))
meta_values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner), st.dictionaries(st.text(min_size=1, max_size=4), inner,
                                                                         max_size=3)), max_leaves=8)


@st.composite
def graphs(draw):
    n_layers, n_heads = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    scores = torch.tensor(draw(st.lists(finite, min_size=n_layers * n_heads, max_size=n_layers * n_heads)))
    meta = draw(st.dictionaries(st.text(min_size=1, max_size=6), meta_values, max_size=4))
    graph = HeadGraph.from_scores(scores.reshape(n_layers, n_heads), meta=meta)
    heads = graph.heads()
    for _ in range(draw(st.integers(0, 4))):  # head -> head edges with extra attributes
        u, v = draw(st.sampled_from(heads)), draw(st.sampled_from(heads))
        graph.add_edge(u, v, draw(finite), q=draw(finite), kind="path", inputs=draw(st.tuples(st.text(max_size=2))))
    if draw(st.booleans()):  # an unmeasured head
        graph.add_head(f"L{n_layers}H0")
    return graph


@settings(max_examples=60, deadline=None)
@given(graph=graphs())
def test_json_round_trip_is_lossless(graph, tmp_path_factory):
    path = graph.to_json(tmp_path_factory.mktemp("g") / "graph.json")
    again = HeadGraph.from_json(path)
    assert again == graph
    assert repr(again.meta) == repr(graph.meta)  # NaN-aware and type-strict: tuples stay tuples
    assert again != HeadGraph.from_scores(torch.ones(1, 1) * 7.5)
    plain = nx.node_link_graph(json.loads(path.read_text()), edges="edges")  # readable by plain networkx
    assert set(plain.nodes) == set(graph.nx.nodes) and set(plain.edges) == set(graph.nx.edges)


def test_scores_matrix_top_prune():
    graph = HeadGraph.from_scores(torch.tensor([[0.1, -0.7], [0.5, 0.05]]), meta={"task": "t"})
    assert graph.scores() == pytest.approx({"L0H0": 0.1, "L0H1": -0.7, "L1H0": 0.5, "L1H1": 0.05})
    assert torch.allclose(graph.matrix(), torch.tensor([[0.1, -0.7], [0.5, 0.05]]))
    assert [n for n, _ in graph.top(2)] == ["L1H0", "L0H0"]
    assert [n for n, _ in graph.top(1, by_magnitude=True)] == ["L0H1"]
    pruned = graph.prune(0.3)
    assert sorted(pruned.heads()) == ["L0H1", "L1H0"]
    assert set(pruned.nx.edges) == {("L0H1", "logits"), ("L1H0", "logits")}
    assert graph.nx.nodes["L1H0"] == {"kind": "head", "layer": 1, "head": 0, "score": pytest.approx(0.5)}
    assert graph.nx.edges["L1H0", "logits"]["score"] == pytest.approx(0.5)
    with pytest.raises(InvalidOptionError, match="-1.0"):
        graph.prune(-1.0)


def test_parse_head_names_the_bad_value():
    assert parse_head("L12H3") == (12, 3)
    with pytest.raises(UnknownNameError, match="'head3'"):
        parse_head("head3")


def test_draw_writes_a_png(tmp_path):
    graph = HeadGraph.from_scores(torch.randn(3, 4), meta={"task": "demo"})
    path = tmp_path / "g.png"
    graph.draw(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
