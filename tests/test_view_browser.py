"""The HTML view in a real browser: Debian's headless Chromium driven by Playwright through its executable path.

Every page is opened from disk with the network blocked (any request that is not file:// is aborted and recorded),
and every test fails on a console error or an uncaught exception. One browser serves the module. Screenshots of
each view are kept in out/view-screenshots/ (a test artifact; docs/view.md shows the ones benchmarks/view.py makes).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from circuits.graph import HeadGraph
from circuits.nodes import EMBED, LOGITS, MLP, Head
from tests.test_view import positional_graph, positional_keys

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "out" / "view-screenshots"
playwright_api = pytest.importorskip("playwright.sync_api", reason="the dev extra `playwright` is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"no {CHROMIUM} (make test installs Debian's chromium with apt-get as root; here it could not)",
                allow_module_level=True)


def edge_graph(seed: int, n_layers: int = 3, n_heads: int = 3, engine: str = "edge_attribution") -> HeadGraph:
    """A graph shaped as the edge engines write it: embed, every head and MLP as senders; every head's q/k/v
    inputs (summed in score, apart in score_q/score_k/score_v), every MLP and the logits as receivers."""
    rng = random.Random(seed)
    graph = HeadGraph(n_layers=n_layers, n_heads=n_heads, meta={
        "engine": engine, "task": "induction", "model": "toy-3L", "n": 8, "seed": seed,
        "options": {"method": "eap"}, "score": "the metric change through that edge alone </script> (words)"})
    writers = [(EMBED, -1)]
    for layer in range(n_layers):
        heads = [Head(layer, h).name for h in range(n_heads)]
        for name in heads:
            graph.add_node(name, rng.uniform(-1, 1))
            for writer, stage in writers:
                per = {f"score_{x}": rng.uniform(-1, 1) for x in "qkv"}
                graph.add_edge(writer, name, sum(per.values()), effect="direct", inputs="q+k+v", **per)
        mlp = graph.add_node(MLP(layer), rng.uniform(-1, 1))
        for writer, stage in writers + [(h, layer) for h in heads]:
            graph.add_edge(writer, mlp, rng.uniform(-1, 1), effect="direct")
        writers += [(h, layer) for h in heads] + [(mlp, layer)]
    for writer, _ in writers:
        graph.add_edge(writer, LOGITS, rng.uniform(-1, 1), effect="direct")
    return graph


def split_edges(graph: HeadGraph) -> list[tuple[str, str, float]]:
    """(sender, receiver.input or receiver, score) of `scored_edges` (a head receiver's inputs apart)."""
    return [(e.sender.name, f"{e.receiver.name}.{e.input}" if e.input else e.receiver.name, s)
            for e, s in graph.scored_edges()]


def top_keys(edges: list[tuple[str, str, float]], k: int, by: str) -> set[str]:
    key = abs if by == "absolute" else (lambda s: s)
    return {f"{u}>{v}" for u, v, _ in sorted(edges, key=lambda e: key(round_6(e[2])), reverse=True)[:k]}


def round_6(x: float) -> float:
    return float(f"{x:.6g}")  # the page keeps 6 significant digits


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def open_view(browser, tmp_path):
    """Open graphs' page from disk, network blocked; after the test: no console errors, no network requests."""
    pages, errors, blocked = [], [], []

    def open_(graphs, name: str, **options):
        from circuits import view

        path = view.to_html(graphs, tmp_path / f"{name}.html", **options)
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
                   else (blocked.append(route.request.url), route.abort()))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        until(page, "window.circuitView && window.circuitView.firstDrawMs() !== null")
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()
    assert errors == [] and blocked == [], (errors, blocked)


def until(page, expression: str, seconds: float = 10.0) -> None:
    """Poll `expression` until it is true. (Playwright's wait_for_function polls through eval, which the page's
    Content-Security-Policy forbids; page.evaluate goes through the DevTools protocol, which it does not.)"""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {seconds} s: {expression}"
        time.sleep(0.02)


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def drawn_keys(page) -> set[str]:
    return set(page.evaluate("window.circuitView.cy.edges().map(e => e.id())"))


def test_small_graph_is_drawn_whole_and_the_slider_sets_the_circuit(open_view):
    graph = edge_graph(seed=0)
    edges = split_edges(graph)
    page = open_view(graph, "small")
    stats = page.evaluate("window.circuitView.stats()")
    assert len(edges) < 300  # the default size: a small graph opens whole
    assert stats == {"nodes": graph.nx.number_of_nodes(), "edges": len(edges), "shownEdges": len(edges),
                     "size": len(edges), "total": len(edges)}
    assert page.locator("#positions-box").is_hidden()  # a plain graph: no columns, no positions control
    assert page.evaluate("window.circuitView.cy.nodes('.column').length") == 0
    shot(page, "small_all")
    page.locator("#size").fill("17")
    until(page, "window.circuitView.stats().edges === 17")
    assert drawn_keys(page) == top_keys(edges, 17, "absolute")
    page.select_option("#by", "signed")
    until(page, "window.circuitView.state.by === 'signed'")
    assert drawn_keys(page) == top_keys(edges, 17, "signed")
    page.select_option("#inputs", "summed")
    until(page, "window.circuitView.stats().total === %d" % graph.nx.number_of_edges())
    assert drawn_keys(page) == top_keys(graph.top_edges(10**6, by="signed"), 17, "signed")
    shot(page, "small_top17_signed")


def test_large_graph_opens_at_the_default_size(open_view):
    graph = edge_graph(seed=1, n_layers=8, n_heads=6)
    edges = split_edges(graph)
    page = open_view(graph, "large", default_edges=250)
    stats = page.evaluate("window.circuitView.stats()")
    assert len(edges) > 1000
    assert (stats["nodes"], stats["edges"], stats["total"]) == (graph.nx.number_of_nodes(), 250, len(edges))
    assert drawn_keys(page) == top_keys(edges, 250, "absolute")
    assert page.locator("#status").get_attribute("data-edges") == "250"


def test_hover_shows_the_score_and_its_meaning_and_click_keeps_a_nodes_edges(open_view):
    graph = edge_graph(seed=2)
    page = open_view(graph, "hover")
    name = "L1H2"
    box = page.locator("#cy").bounding_box()
    at = page.evaluate(f"window.circuitView.cy.getElementById('{name}').renderedPosition()")
    page.mouse.move(box["x"] + at["x"], box["y"] + at["y"])
    info = page.locator("#info")
    until(page, f"document.getElementById('info').textContent.includes('{name}')")
    score = graph.nx.nodes[name]["score"]
    assert float(info.locator(".score").inner_text()) == pytest.approx(score, rel=1e-3)
    assert "the metric change through that edge alone </script> (words)" in info.inner_text()
    shot(page, "hover")
    page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])
    expected = [k for k in page.evaluate("window.circuitView.cy.edges().map(e => e.id())")
                if k.startswith(f"{name}>") or k.split(">")[1].split(".")[0] == name]
    until(page, "window.circuitView.stats().shownEdges < window.circuitView.stats().edges")
    assert page.evaluate("window.circuitView.stats().shownEdges") == len(expected) > 0
    shot(page, "focus")


def test_diff_view_counts_are_the_set_differences(open_view):
    a, b = edge_graph(seed=3), edge_graph(seed=4, engine="path_patching")
    page = open_view([a, b], "diff")
    page.select_option("#diff", "1")
    page.locator("#size").fill("40")
    until(page, "window.circuitView.state.size === 40 && window.circuitView.state.diff === 1")
    top_a, top_b = top_keys(split_edges(a), 40, "absolute"), top_keys(split_edges(b), 40, "absolute")
    counts = page.locator("#diff-counts")
    got = {k: int(counts.get_attribute(f"data-{k}")) for k in ("only-a", "only-b", "both")}
    assert got == {"only-a": len(top_a - top_b), "only-b": len(top_b - top_a), "both": len(top_a & top_b)}
    assert drawn_keys(page) == top_a | top_b
    shot(page, "diff")
    page.select_option("#graph", "1")  # the engine switch
    page.select_option("#diff", "-1")
    until(page, "window.circuitView.state.graph === 1 && window.circuitView.state.diff === -1")
    assert page.locator("#title").inner_text().startswith("path_patching")
    assert drawn_keys(page) == top_b


def test_search_and_the_faithfulness_curve(open_view):
    graph = edge_graph(seed=5)
    total = graph.edge_total()
    assert total == len(split_edges(graph))  # every edge of the model scored
    graph.meta["curve"] = {"fractions": [0.01, 0.05, 0.1, 0.5, 1.0], "signed": [0.1, 0.4, 0.7, 0.9, 1.0],
                           "absolute": [0.2, 0.5, 0.8, 0.95, 1.0], "cpr": 0.83, "cmd": 0.12}
    page = open_view(graph, "curve")
    page.locator("#search").fill("l1h")
    until(page, "document.getElementById('found').dataset.count !== undefined")
    assert int(page.locator("#found").get_attribute("data-count")) == sum("L1H" in n for n in graph.nx.nodes)
    assert page.locator("#curve-box").is_visible()
    text = page.locator("#curve-text")
    assert "CPR 0.8300 · CMD 0.1200" in text.inner_text() and "ranked by |score|" in text.inner_text()
    page.locator("#curve .point").nth(3).click()  # 50% of the model's edges, MIB's int(0.5 * total)
    until(page, f"window.circuitView.stats().edges === {int(0.5 * total)}")
    assert "faithfulness 0.9500 (measured)" in text.inner_text()
    page.select_option("#by", "signed")
    until(page, "document.getElementById('curve-text').innerText.includes('ranked by score')")
    assert "faithfulness 0.9000 (measured)" in text.inner_text()
    shot(page, "curve")
    page.select_option("#inputs", "summed")  # summed edges are not what the curve counts: no point on it
    until(page, "document.getElementById('curve-text').innerText.includes('to place this circuit')")


def test_a_positional_graph_is_drawn_in_columns_and_the_slider_ranks_its_edges_at_positions(open_view):
    graph = positional_graph()
    _, labels = graph.position_kind()
    every = positional_keys(graph)
    page = open_view(graph, "positional", default_edges=12, positional_edges=40)
    columns = page.evaluate("window.circuitView.cy.nodes('.column').map(c => [c.data('label'), c.children().length])")
    assert columns == [[label, graph.nx.number_of_nodes()] for label in labels]  # one layer stack per span
    stats = page.evaluate("window.circuitView.stats()")
    assert (stats["edges"], stats["total"]) == (12, 40)  # the slider stops at the page's limit
    assert drawn_keys(page) == top_keys([(*k.split(">"), s) for k, s in every], 12, "absolute")
    assert f"top 40 edges at spans by |score| and by score, of the graph's {len(every)}" in \
        page.locator("#status").inner_text()
    ends = page.evaluate("window.circuitView.cy.edges().map(e => [e.source().data('at'), e.target().data('at'), e.data('at')])")
    assert all(a == b == c for a, b, c in ends)  # each edge inside its own column
    assert len({box["y1"] for box in column_boxes(page)}) == 1  # four spans: one band
    shot(page, "positional")
    page.locator("#size").fill("5")
    until(page, "window.circuitView.stats().edges === 5")
    assert drawn_keys(page) == top_keys([(*k.split(">"), s) for k, s in every], 5, "absolute")
    page.select_option("#by", "signed")
    until(page, "window.circuitView.state.by === 'signed'")
    assert drawn_keys(page) == top_keys([(*k.split(">"), s) for k, s in every], 5, "signed")
    key, score = max(every, key=lambda e: round_6(e[1]))
    box = page.locator("#cy").bounding_box()
    at = page.evaluate(f"window.circuitView.cy.getElementById('{key}').renderedMidpoint()")
    page.mouse.move(box["x"] + at["x"], box["y"] + at["y"])
    until(page, "document.getElementById('info').textContent.includes('span ')")
    info = page.locator("#info").inner_text()
    label = key.split("@")[1]
    assert f"span {label}" in info and float(page.locator("#info .score").inner_text()) == pytest.approx(score, rel=1e-3)
    shot(page, "positional_hover")
    page.select_option("#positions", "summed")  # today's view: every position together
    until(page, "window.circuitView.cy.nodes('.column').length === 0")
    stats = page.evaluate("window.circuitView.stats()")
    assert (stats["nodes"], stats["total"]) == (graph.nx.number_of_nodes(), len(split_edges(graph)))
    assert drawn_keys(page) == top_keys(split_edges(graph), 5, "signed")


def column_boxes(page) -> list[dict]:
    return page.evaluate("window.circuitView.cy.nodes('.column').map(c => c.boundingBox())")


def test_many_positions_wrap_into_bands_about_the_panels_shape(open_view):
    graph = positional_graph("tokens")
    _, labels = graph.position_kind()
    page = open_view(graph, "positional_tokens", positional_edges=40)
    boxes = column_boxes(page)
    assert len(boxes) == len(labels) > 16
    bands = sorted({round(box["y1"]) for box in boxes})
    assert len(bands) >= 2  # one strip of every token would be far wider than the panel
    overlapping = [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[:i])
                   if a["x1"] < b["x2"] and b["x1"] < a["x2"] and a["y1"] < b["y2"] and b["y1"] < a["y2"]]
    assert overlapping == []
    width = max(b["x2"] for b in boxes) - min(b["x1"] for b in boxes)
    height = max(b["y2"] for b in boxes) - min(b["y1"] for b in boxes)
    panel = page.locator("#cy").bounding_box()
    assert 0.4 < (width / height) / (panel["width"] / panel["height"]) < 2.5  # about the panel's shape
    ends = page.evaluate("window.circuitView.cy.edges().map(e => [e.source().data('at'), e.target().data('at'), e.data('at')])")
    assert ends and all(a == b == c for a, b, c in ends)  # each edge inside its own column, in whichever band
    shot(page, "positional_tokens")


def test_a_real_engines_graph_with_its_record(open_view, random_model):
    import circuits
    import tasks

    graph = circuits.discover(random_model, tasks.get("induction"), engine="edge_attribution", n=4, seed=0,
                              method="eap")
    page = open_view(graph, "real")
    stats = page.evaluate("window.circuitView.stats()")
    assert stats["total"] == len(graph.scored_edges()) == graph.edge_total()
    assert stats["edges"] == min(300, stats["total"]) and stats["nodes"] == graph.nx.number_of_nodes()
    assert drawn_keys(page) == top_keys(split_edges(graph), stats["edges"], "absolute")
    header = page.locator("#record").inner_text()
    assert "edge_attribution" in header and 'method="eap"' in header and "induction" in header


def test_the_notebook_view_draws_inside_its_iframe(browser, tmp_path):
    graph = edge_graph(seed=6)
    wrapper = tmp_path / "notebook.html"
    wrapper.write_text(f"<!DOCTYPE html><html><body><h1>a notebook cell</h1>{graph._repr_html_()}</body></html>")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://") else route.abort())
    page.goto(wrapper.as_uri())
    deadline = time.monotonic() + 10
    while len(page.frames) < 2 or not page.frames[1].evaluate("window.circuitView && window.circuitView.firstDrawMs()"):
        assert time.monotonic() < deadline, "the iframe's view did not draw"
        time.sleep(0.05)
    assert page.frames[1].evaluate("window.circuitView.stats().edges") == len(split_edges(graph))
    shot(page, "notebook")
    page.close()
    assert errors == []
