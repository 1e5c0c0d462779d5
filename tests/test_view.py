"""The HTML view without a browser (its data, its page, the CLI) and the static figure's readability.

The browser tests are tests/test_view_browser.py."""

from __future__ import annotations

import functools
import itertools
import json
import random
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from analyses import cli
from circuits import view
from circuits.errors import InvalidOptionError
from circuits.graph import HeadGraph
from circuits.nodes import EMBED, LOGITS, MLP, Head


def smollm2_shaped(seed: int = 0, n_layers: int = 30, n_heads: int = 9) -> HeadGraph:
    """SmolLM2's shape (30 layers of 9 heads) with random node scores and the strongest edges between the heads
    whose labels the old figure drew on top of each other (L20H0, L19H2, L17H4, L14H3)."""
    rng = random.Random(seed)
    graph = HeadGraph(n_layers=n_layers, n_heads=n_heads, meta={
        "engine": "edge_attribution", "task": "capitals", "model": "SmolLM2-135M-Instruct",
        "score": "the metric change through that edge alone, normalised by m_clean - m_corrupted; " * 3})
    for layer in range(n_layers):
        for head in range(n_heads):
            graph.add_node(Head(layer, head), rng.uniform(-0.2, 0.2))
        graph.add_node(MLP(layer), rng.uniform(-0.2, 0.2))
    strong = ["L14H3", "L17H4", "L19H2", "L20H0", "L20H1", "L19H3", "L17H5"]
    for u, v in itertools.combinations(strong, 2):
        if Head.parse(u).layer < Head.parse(v).layer:  # a head feeds later layers only
            graph.add_edge(u, v, rng.uniform(0.5, 1.0), effect="direct")
    for _ in range(400 if n_layers > 1 else 0):
        a, b = sorted(rng.sample(range(n_layers), 2))
        graph.add_edge(Head(a, rng.randrange(n_heads)), Head(b, rng.randrange(n_heads)), rng.uniform(-0.3, 0.3),
                       effect="direct")
    for name in strong:
        graph.add_edge(name, LOGITS, rng.uniform(0.5, 1.0), effect="direct")
        graph.add_edge(EMBED, name, rng.uniform(0.5, 1.0), effect="direct")
    return graph


@functools.lru_cache(maxsize=None)
def positional_graph(positions: str = "spans") -> HeadGraph:
    """Edge attribution per span (EAP) on a random 2-layer toy with MLPs, 4 prompts of the induction task (spans
    repeated, next, end, other: 300 edges at positions; or per token, `positions="tokens"`). Shared with the browser
    tests."""
    import tasks
    from circuits import models
    from circuits.engines.edge_attribution import EdgeAttribution

    model = models.toy(models.ToyConfig(n_layers=2, n_heads=3, d_model=12, d_head=4, d_vocab=64, n_ctx=64, seed=3,
                                        attn_only=False, d_mlp=16))
    return EdgeAttribution(method="eap", positions=positions).run(model, tasks.get("induction"), n=4)


def positional_keys(graph: HeadGraph) -> list[tuple[str, float]]:
    """`scored_edges(positional=True)` as the page names them (sender>receiver.input@label), with their scores."""
    return [(f"{e.sender.name}>{e.receiver.name}{'.' + e.input if e.input else ''}@{e.position}", s)
            for e, s in graph.scored_edges(positional=True)]


def embedded(page: str) -> dict:
    return json.loads(re.search(r'<script id="circuit-data" type="application/json">(.*?)</script>', page, re.S)[1])


def test_page_is_self_contained_and_embeds_every_scored_edge():
    graph = smollm2_shaped()
    page = view.page(graph)
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing loaded from elsewhere
    assert "default-src 'none'" in page  # and the browser is told to refuse any request
    assert page.count("</script>") == 4  # the data's "</script"-like text is escaped, not ending its element early
    data = embedded(page)["graphs"][0]
    names = [n[0] for n in data["nodes"]]
    edges = {(names[s], names[r]): score for s, r, score in zip(*(data["edges"][c] for c in ("s", "r", "score")))}
    assert edges == {(u, v): pytest.approx(s, rel=1e-5) for u, v, s in graph.nx.edges(data="score")}
    assert data["record"]["engine"] == "edge_attribution" and data["layers"] == 30


def test_split_edges_are_scored_edges_and_unscored_edges_stay_out():
    graph = HeadGraph(n_layers=2, n_heads=1)
    graph.add_edge("L0H0", "L1H0", 0.6, effect="direct", inputs="q+k+v", score_q=0.1, score_k=0.2, score_v=0.3)
    graph.add_edge("embed", "L1H0", 0.4, effect="direct", inputs="q+k")  # no per-input scores: each input covered
    graph.add_edge("L0H0", LOGITS, 0.5, effect="direct")
    graph.nx.add_edge("L1H0", LOGITS, score=float("nan"))
    data = view.graph_data(graph)
    names = [n[0] for n in data["nodes"]]
    rows = [(names[data["edges"]["s"][e]], names[data["edges"]["r"][e]]) for e in data["split"]["e"]]
    split = [(u, f"{v}.{'qkv'[i]}" if i is not None else v, s)
             for (u, v), i, s in zip(rows, data["split"]["input"], data["split"]["score"])]
    expected = [(e.sender.name, f"{e.receiver.name}.{e.input}" if e.input else e.receiver.name, s)
                for e, s in graph.scored_edges()]
    assert split == expected and len(expected) == 6 and len(data["edges"]["s"]) == 3
    assert data["edgeTotal"] == graph.edge_total()


def test_a_positional_graph_embeds_its_labels_and_its_top_edges_at_positions():
    graph = positional_graph()
    kind, labels = graph.position_kind()
    every = positional_keys(graph)
    data = view.graph_data(graph, positional_edges=10**6)
    names = [n[0] for n in data["nodes"]]
    p = data["positions"]
    assert (p["kind"], p["labels"], p["limit"], p["totals"]) == (kind, labels, 10**6, [len(every)])
    assert len(labels) == 4 and len(every) == 4 * len(graph.scored_edges())  # every edge scored at every span
    got = [(f"{names[data['edges']['s'][e]]}>{names[data['edges']['r'][e]]}{'.' + 'qkv'[i] if i is not None else ''}"
            f"@{labels[at]}", score) for e, i, at, score in zip(p["e"], p["input"], p["at"], p["score"])]
    assert got == [(k, view.data.number(s)) for k, s in every]  # all of them, in the graph's order
    limited = view.view_data([graph], positional_edges=10)["graphs"][0]["positions"]
    top = {by: [k for k, _ in sorted(every, key=lambda e: key(view.data.number(e[1])), reverse=True)[:10]]
           for by, key in (("absolute", abs), ("signed", lambda x: x))}
    kept = [got[i][0] for i in range(len(got)) if got[i][0] in set(top["absolute"]) | set(top["signed"])]
    assert 10 < len(limited["e"]) == len(kept) <= 20 and limited["totals"] == [len(every)]
    assert [(e, at) for e, at in zip(limited["e"], limited["at"])] == [
        (p["e"][i], p["at"][i]) for i in range(len(got)) if got[i][0] in kept]  # both rankings' top 10, in order
    assert len(view.page(graph)) < len(view.page(graph, positional_edges=10**6))


def test_a_plain_graph_has_no_positions_and_its_data_is_unchanged():
    graph = positional_graph()
    plain = HeadGraph(graph.nx.copy())  # the same edges (their positions too), but no meta["positions"]
    plain.nx.graph["meta"] = {k: v for k, v in graph.meta.items() if k != "positions"}
    data = view.graph_data(plain)
    assert "positions" not in data
    assert data == {k: v for k, v in view.graph_data(graph).items() if k != "positions"}
    assert set(view.graph_data(smollm2_shaped(n_layers=2))) == {
        "label", "layers", "heads", "edgeTotal", "record", "nodes", "edges", "split", "effects", "curve"}


def test_curves_from_meta_an_edge_curve_or_curves_and_bad_ones_refused():
    graph = smollm2_shaped(n_layers=3)
    assert view.graph_data(graph)["curve"] is None
    one = {"fraction": [0.1, 1.0], "faithfulness": [0.5, 1.0], "by": "signed", "cpr": 0.7}
    assert view.graph_data(graph, curve=one)["curve"] == {"fractions": [0.1, 1.0], "signed": [0.5, 1.0],
                                                          "absolute": None, "random": None, "cpr": 0.7, "cmd": None}

    @dataclass
    class EdgeCurve:  # circuits.evaluation.curves.EdgeCurve's fields
        fractions: list
        signed: list
        absolute: list
        cpr: float = 0.6
        cmd: float = 0.2

    @dataclass
    class Curves:
        curves: dict
        random: EdgeCurve

    curves = Curves({"eap": EdgeCurve([0.5, 1.0], [0.8, 1.0], [0.9, 1.0])},
                    EdgeCurve([0.5, 1.0], [0.1, 1.0], [0.1, 1.0]))
    data = view.view_data([graph, graph], ["eap", "other"], curves)
    assert data["graphs"][0]["curve"]["absolute"] == [0.9, 1.0] and data["graphs"][0]["curve"]["cmd"] == 0.2
    assert data["graphs"][0]["curve"]["random"]["signed"] == [0.1, 1.0] and data["graphs"][1]["curve"] is None
    with pytest.raises(InvalidOptionError, match="faithfulness"):
        view.curve_data({"fraction": [0.1, 1.0], "faithfulness": [1.0]})
    with pytest.raises(InvalidOptionError, match="1 curves for 2 graphs"):
        view.view_data([graph, graph], None, [None])
    with pytest.raises(InvalidOptionError, match="default_edges=0"):
        view.page(graph, default_edges=0)
    with pytest.raises(InvalidOptionError, match="positional_edges=0"):
        view.page(graph, positional_edges=0)
    with pytest.raises(InvalidOptionError, match="by='best'"):
        view.page(graph, by="best")


def test_to_html_and_the_notebook_view(tmp_path):
    graph = smollm2_shaped(n_layers=3)
    path = graph.to_html(tmp_path / "deep" / "g.html", default_edges=5)
    assert embedded(path.read_text())["defaultEdges"] == 5
    frame = graph._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and "&lt;script" in frame and "<script" not in frame


def test_cli_view_writes_one_page_for_several_graphs(tmp_path, capsys):
    a, b = smollm2_shaped(seed=1, n_layers=3), smollm2_shaped(seed=2, n_layers=3)
    files = [a.to_json(tmp_path / "a.json"), b.to_json(tmp_path / "b.json")]
    out = tmp_path / "v.html"
    assert cli.main(["view", *map(str, files), "--out", str(out), "--labels", "eap,path", "--edges", "9"]) == 0
    data = embedded(out.read_text())
    assert [g["label"] for g in data["graphs"]] == ["eap", "path"] and data["defaultEdges"] == 9
    assert "wrote" in capsys.readouterr().out
    spans = positional_graph().to_json(tmp_path / "spans.json")  # its meta["positions"] read back from JSON
    assert cli.main(["view", str(spans), "--out", str(out), "--positional-edges", "7"]) == 0
    assert embedded(out.read_text())["graphs"][0]["positions"]["limit"] == 7
    (tmp_path / "bad.json").write_text("{\n nope")
    for argv, words in ([str(tmp_path / "missing.json")], "does not exist"), ([str(tmp_path / "bad.json")], "line 2"), \
            ([str(files[0]), "--labels", "x,y"], "one label for each"):
        assert cli.main(["view", *argv, "--out", str(out)]) == 2
        assert words in capsys.readouterr().err


def test_view_help_imports_no_torch():
    code = "import sys; from analyses import cli\ntry: cli.main(['view', '--help'])\nexcept SystemExit: pass\n" \
           "print('TORCH', 'torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "GRAPH.json" in run.stdout and run.stdout.strip().endswith("TORCH False")


# --- the static figure ----------------------------------------------------------------------------------------
def text_boxes(fig, axes=None):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent"))
             if t.get_visible() and t.get_text().strip() and (axes is None or t.axes is axes)]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts]


def test_figure_of_a_30_layer_graph_is_readable(tmp_path):
    graph = smollm2_shaped()
    fig = graph.draw(k=8, edges=12)
    heat, panel = fig.axes[0], fig.axes[1]
    labels = [(t, box) for t, box in text_boxes(fig, panel) if re.fullmatch(r"L\d+H\d+|M\d+|embed|logits", t)]
    assert len(labels) >= 8  # the strong heads, the input and the read-out
    for (a, box_a), (b, box_b) in itertools.combinations(labels, 2):
        assert not box_a.overlaps(box_b), (a, b)
    arrows = [p for p in panel.patches if type(p).__name__ == "FancyArrowPatch"]
    assert len(arrows) == 12  # only the top edges
    assert fig._suptitle.get_text() == "edge_attribution · capitals · SmolLM2-135M-Instruct"
    footer = fig._supxlabel
    assert footer.get_text().startswith("score: the metric change")
    footer_box = footer.get_window_extent(fig.canvas.get_renderer())
    for text, box in text_boxes(fig):
        if text != footer.get_text():
            assert not box.overlaps(footer_box), text
    for ax in fig.axes:  # the axes (and their tick labels and axis labels) end above the footer
        assert ax.get_tightbbox(fig.canvas.get_renderer()).y0 >= footer_box.y1 - 1
    heat_ticks = [box for text, box in text_boxes(fig, heat) if text.isdigit()]
    for a, b in itertools.combinations(heat_ticks, 2):
        assert not a.overlaps(b)
    path = graph.draw(tmp_path / "g.png")  # saved, and closed
    assert (tmp_path / "g.png").stat().st_size > 10_000 and path is not None
