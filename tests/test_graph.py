"""HeadGraph: scores, top, prune, drawing, and a lossless node-link JSON round trip."""

import json

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from circuits.errors import InvalidOptionError, UnknownNameError
from circuits.graph import HeadGraph
from circuits.nodes import Head

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
        graph.add_node(f"L{n_layers}H0")
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
    assert [n for n, _ in graph.top(2, by="signed")] == ["L1H0", "L0H0"]
    assert [n for n, _ in graph.top(1, by="absolute")] == ["L0H1"]
    pruned = graph.prune(0.3)
    assert sorted(pruned.heads()) == ["L0H1", "L1H0"]
    assert set(pruned.nx.edges) == {("L0H1", "logits"), ("L1H0", "logits")}
    assert graph.nx.nodes["L1H0"] == {"kind": "head", "layer": 1, "head": 0, "score": pytest.approx(0.5)}
    assert graph.nx.edges["L1H0", "logits"]["score"] == pytest.approx(0.5)
    with pytest.raises(InvalidOptionError, match="-1.0"):
        graph.prune(-1.0)


def test_parse_head_names_the_bad_value():
    assert Head.parse("L12H3") == Head(12, 3)
    with pytest.raises(UnknownNameError, match="'head3'"):
        Head.parse("head3")


def test_draw_writes_a_png(tmp_path):
    graph = HeadGraph.from_scores(torch.randn(3, 4), meta={"task": "demo"})
    path = tmp_path / "g.png"
    graph.draw(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- MLP nodes and circuits from scored edges -------------------------------------------------------------------
def test_mlp_nodes_join_edges_but_not_head_scores():
    graph = HeadGraph(n_layers=2, n_heads=2)
    graph.add_edge("L0H1", "M0", 0.5)
    graph.add_edge("M0", "logits", -0.25)
    graph.add_node("M1", 0.75)
    assert graph.mlps() == ["M0", "M1"] and graph.heads() == ["L0H1"]
    assert graph.nx.nodes["M0"] == {"kind": "mlp", "layer": 0} and graph.nx.nodes["M1"]["score"] == 0.75
    assert graph.scores() == {} and graph.matrix().isnan().all()
    with pytest.raises(UnknownNameError, match="'MLP0'"):
        graph.add_edge("MLP0", "logits", 1.0)


@st.composite
def edge_graphs(draw):
    """A layered graph: embed -> heads and MLPs of 3 layers -> logits, a random subset of the forward edges,
    distinct scores of both signs."""
    nodes = ["embed"] + [n for layer in range(3) for n in (f"L{layer}H0", f"L{layer}H1", f"M{layer}")] + ["logits"]
    pairs = [(u, v) for i, u in enumerate(nodes) for v in nodes[i + 1:] if u != "embed" or v != "logits"]
    chosen = draw(st.lists(st.sampled_from(pairs), min_size=1, max_size=len(pairs), unique=True))
    magnitudes = draw(st.permutations(range(1, len(chosen) + 1)))
    signs = draw(st.lists(st.sampled_from([-1, 1]), min_size=len(chosen), max_size=len(chosen)))
    graph = HeadGraph(n_layers=3, n_heads=2)
    for (u, v), m, sign in zip(chosen, magnitudes, signs):
        graph.add_edge(u, v, sign * m / 7)
    return graph


def literal_circuit_edges(edges):
    """Selected edges on some embed -> logits path through the selected edges, one has_path at a time."""
    sub = nx.DiGraph([(u, v) for u, v, _ in edges])
    return {(u, v) for u, v, _ in edges if "embed" in sub and "logits" in sub
            and nx.has_path(sub, "embed", u) and nx.has_path(sub, v, "logits")}


def literal_greedy(graph, n, key):
    inside, chosen = {"logits"}, []
    while len(chosen) < n:
        candidates = [(u, v, s) for u, v, s in graph.nx.edges(data="score")
                      if v in inside and (u, v, s) not in chosen]
        if not candidates:
            break
        best = max(candidates, key=key)
        chosen.append(best)
        inside.add(best[0])
    return chosen


@settings(max_examples=40, deadline=None)
@given(graph=edge_graphs(), n=st.integers(0, 12), by=st.sampled_from(["absolute", "signed"]))
def test_selections_rank_as_asked_and_prune_to_complete_paths(graph, n, by):
    key = (lambda e: abs(e[2])) if by == "absolute" else (lambda e: e[2])
    every = list(graph.nx.edges(data="score"))
    assert graph.top_edges(n, by=by) == sorted(every, key=key, reverse=True)[:n]
    assert graph.greedy_edges(n, by=by) == literal_greedy(graph, n, key)
    threshold = 0.5
    assert {e[:2] for e in graph.threshold_edges(threshold, by=by)} == {e[:2] for e in every if key(e) >= threshold}
    for edges in (graph.top_edges(n, by=by), graph.greedy_edges(n, by=by), graph.threshold_edges(threshold, by=by)):
        circuit = graph.subgraph(edges, method="test", by=by)
        assert set(circuit.nx.edges) == literal_circuit_edges(edges)
        assert {n for n in circuit.nx.nodes if n not in ("embed", "logits")} == {x for e in circuit.nx.edges for x in e} - {"embed", "logits"}
        assert circuit.meta["selection"] == {"method": "test", "by": by, "edges_chosen": len(edges)}


def test_signed_and_absolute_rankings_differ_and_must_be_named():
    graph = HeadGraph(n_layers=2, n_heads=1)
    graph.add_edge("embed", "L0H0", 1.0)
    graph.add_edge("L0H0", "logits", -3.0)
    graph.add_edge("embed", "L1H0", 0.5)
    graph.add_edge("L1H0", "logits", 2.0)
    assert graph.top_edges(1, by="absolute")[0][:2] == ("L0H0", "logits")
    assert graph.top_edges(1, by="signed")[0][:2] == ("L1H0", "logits")
    # the top two by |score| end at logits but nothing reaches them from embed: pruned to nothing
    assert graph.subgraph(graph.top_edges(2, by="absolute")).nx.number_of_edges() == 0
    # greedy by |score|: L0H0->logits (3), L1H0->logits (2), then embed->L0H0 (1) before embed->L1H0 (0.5)
    greedy = graph.greedy_edges(3, by="absolute")
    assert [e[:2] for e in greedy] == [("L0H0", "logits"), ("L1H0", "logits"), ("embed", "L0H0")]
    assert set(graph.subgraph(greedy).nx.edges) == {("embed", "L0H0"), ("L0H0", "logits")}
    assert sorted(graph.subgraph(greedy).heads()) == ["L0H0"]
    with pytest.raises(TypeError):
        graph.top_edges(2)  # no implicit ranking
    with pytest.raises(InvalidOptionError, match="'magnitude'"):
        graph.top_edges(2, by="magnitude")


# --- edges as values and circuits as sets of them ---------------------------------------------------------------
def test_edge_values_parse_name_and_refuse_impossible_edges():
    from circuits import Edge
    from circuits.errors import InvalidEdgeError
    from circuits.nodes import MLP, Input, Readout

    edge = Edge("L0H1", "L1H0", "k")
    assert edge == Edge(Head(0, 1), Head(1, 0), "k") and hash(edge) == hash(Edge("L0H1", "L1H0", "k"))
    assert edge.name == "L0H1->L1H0<k>" and Edge.parse(edge.name) == edge
    assert Edge.parse("embed->M0") == Edge(Input(), MLP(0)) and Edge("M1", "logits").receiver == Readout()
    assert Edge("L1H0", "M1").name == "L1H0->M1"  # a head feeds its own layer's MLP
    for bad, match in [(("L1H0", "L1H1", "q"), "does not come before"), (("M1", "L1H0", "q"), "does not come before"),
                       (("L0H0", "L1H0"), "expected input in"), (("L0H0", "L1H0", "x"), "expected input in"),
                       (("L0H0", "M1", "q"), "expected input=None"), (("logits", "M1"), "read-out sends nothing"),
                       (("L0H0", "embed"), "input receives nothing"), (("L0H0", "X9"), "'X9'")]:
        with pytest.raises(InvalidEdgeError, match=match):
            Edge(*bad)
    with pytest.raises(InvalidEdgeError, match="'L0H1=>L1H0'"):
        Edge.parse("L0H1=>L1H0")


def test_all_edges_count_is_mibs():
    from types import SimpleNamespace

    from circuits.nodes import all_edges

    cfg = SimpleNamespace(n_layers=2, n_heads=3, attn_only=False)
    edges = all_edges(cfg)
    # MIB: senders 1 + L (H + 1); layer l's q/k/v hear 1 + l (H + 1) senders, its MLP those and its own heads
    expected = sum(3 * 3 * (1 + l * 4) + (1 + l * 4 + 3) for l in range(2)) + (1 + 2 * 4)
    assert len(edges) == len(set(edges)) == expected
    assert len(all_edges(SimpleNamespace(n_layers=2, n_heads=3, attn_only=True))) == 3 * 3 * 1 + 3 * 3 * 4 + 7


def qkv_graph():
    """embed -> L0H0 (q/k/v scored apart) -> logits; L0H1 joint-scored; an MLP; one unscored edge."""
    graph = HeadGraph(n_layers=2, n_heads=2)
    graph.add_edge("embed", "L0H0", 0.6, effect="direct", inputs="q+k+v", score_q=0.5, score_k=-0.2, score_v=0.3)
    graph.add_edge("embed", "L0H1", 0.4, effect="direct", inputs="q+k")
    graph.add_edge("L0H0", "L1H0", 0.1, effect="direct", inputs="v", score_v=float("nan"))
    graph.add_edge("L0H0", "logits", 0.9, effect="direct")
    graph.add_edge("L0H1", "M0", -0.7, effect="direct")
    graph.add_edge("M0", "logits", 0.05, effect="direct")
    graph.nx.add_edge("L1H0", "logits")  # unscored
    return graph


def test_scored_edges_expand_head_receivers_into_their_inputs():
    from circuits import Edge

    scored = dict(qkv_graph().scored_edges())
    assert scored == {Edge("embed", "L0H0", "q"): 0.5, Edge("embed", "L0H0", "k"): -0.2,
                      Edge("embed", "L0H0", "v"): 0.3,
                      Edge("embed", "L0H1", "q"): 0.4, Edge("embed", "L0H1", "k"): 0.4,
                      Edge("L0H0", "logits"): 0.9, Edge("L0H1", "M0"): -0.7, Edge("M0", "logits"): 0.05}


def test_circuit_takes_top_edges_then_prunes_as_mib_does():
    from circuits import Edge

    graph = qkv_graph()
    assert graph.circuit(k=2, by="absolute") == frozenset()  # L0H0 -> logits, L0H1 -> M0: no path from the input
    assert graph.circuit(k=3, by="absolute") == frozenset({Edge("embed", "L0H0", "q"), Edge("L0H0", "logits")})
    # by |score|: 0.9, -0.7, 0.5, 0.4, 0.4: L0H1 -> M0 has no path on to the read-out and is pruned
    assert graph.circuit(k=5, by="absolute") == frozenset({Edge("embed", "L0H0", "q"), Edge("L0H0", "logits")})
    assert Edge("L0H1", "M0") in graph.circuit(k=8, by="absolute")
    # signed: the negative edges come last
    assert graph.circuit(k=6, by="signed") == frozenset({Edge("embed", "L0H0", "q"), Edge("embed", "L0H0", "v"),
                                                        Edge("L0H0", "logits")})
    # greedy from the read-out: L0H0 -> logits, then L0H0's best input, then M0 -> logits ...
    assert graph.circuit(k=2, by="absolute", greedy=True) == frozenset({Edge("embed", "L0H0", "q"),
                                                                       Edge("L0H0", "logits")})
    # fraction of every edge of the model's graph, floored as MIB does
    assert graph.edge_total() == len(__import__("circuits").nodes.all_edges(
        __import__("types").SimpleNamespace(n_layers=2, n_heads=2, attn_only=False)))
    assert graph.circuit(fraction=3.9 / graph.edge_total(), by="absolute") == graph.circuit(k=3, by="absolute")
    assert graph.circuit(fraction=1.0, by="absolute") == graph.circuit(k=100, by="absolute")
    assert graph.circuit(k=0, by="absolute") == frozenset()


def test_circuit_refuses_bad_choices_and_names_the_old_call():
    from circuits.errors import MissingOptionError, RenamedError

    graph = qkv_graph()
    with pytest.raises(RenamedError, match="subgraph"):
        graph.circuit(graph.top_edges(2, by="absolute"))
    with pytest.raises(MissingOptionError, match="exactly one of k"):
        graph.circuit(by="absolute")
    with pytest.raises(MissingOptionError, match="exactly one of k"):
        graph.circuit(k=2, fraction=0.1, by="absolute")
    with pytest.raises(InvalidOptionError, match="fraction=1.5"):
        graph.circuit(fraction=1.5, by="absolute")
    with pytest.raises(MissingOptionError):
        graph.circuit(k=2)
