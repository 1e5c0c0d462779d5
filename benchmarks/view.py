"""The HTML view on real graphs: file size, time to first draw and slider time in headless Chromium, and screenshots.

`python -m benchmarks.view [--quick] [--out out/view] [--docs]`

  induction  the induction task's default model: edge attribution, path patching and activation patching, one page
             (engine switch, diff view); the page docs/view.md embeds (--docs writes it to docs/viewer/)
  spans      the induction task's default model: edge attribution (EAP) per span (repeated, next, end, other), in
             columns; its top 2,000 edges at spans in the page (docs/view.md shows it)
  smollm2    the bundled SmolLM2-135M on `capitals`: edge attribution (EAP) of the whole edge graph (every head's q, k
             and v apart), one page; --quick: 4 prompts instead of 16

Time to first draw is `performance.now()` at Cytoscape's first render (from navigation start: reading the file,
parsing the data, ranking every edge, drawing the default top edges), median of 3 loads, network blocked. The slider
time is moving it to 1,000 and 5,000 edges (induction: every edge; --all: SmolLM2's every edge too, minutes) until
they are drawn, and back. Screenshots go to OUT (and docs/ with --docs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import circuits
import tasks
from circuits import view
from circuits.evaluation import edge_curves
from circuits.graph import HeadGraph

CHROMIUM = "/usr/bin/chromium"
INDUCTION_ENGINES = ("edge_attribution", "path_patching", "activation_patching")
DOCS = Path(__file__).resolve().parents[1] / "docs"


def induction_graphs(n: int) -> list[Any]:
    task = tasks.get("induction")
    model = task.default_model()
    return [circuits.discover(model, task, engine=name, n=n, seed=0) for name in INDUCTION_ENGINES]


def induction_spans_graph(n: int) -> Any:
    task = tasks.get("induction")
    return circuits.discover(task.default_model(), task, engine="edge_attribution", n=n, seed=0, method="eap",
                             positions="spans")


def smollm2_graph(n: int) -> Any:
    task = tasks.get("capitals")
    return circuits.discover(circuits.models.bundled(), task, engine="edge_attribution", n=n, seed=0, method="eap")


def top_edges_only(graph: HeadGraph, k: int) -> HeadGraph:
    """A copy of `graph` with every node and only its `k` edges of largest |score| (q, k and v summed)."""
    keep = {(u, v) for u, v, _ in graph.top_edges(k, by="absolute")}
    copy = graph.nx.copy()
    copy.remove_edges_from([edge for edge in graph.nx.edges if edge not in keep])
    kept = f"top {k} edges by |score| of {graph.nx.number_of_edges()}"
    copy.graph["meta"] = {**graph.meta, "selection": {"kept": kept}}
    return HeadGraph(copy)


def until(page: Any, expression: str, seconds: float = 120.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := page.evaluate(expression)):
        if time.monotonic() > deadline:
            raise TimeoutError(expression)
        time.sleep(0.01)
    return value


def measure(browser: Any, path: Path, shots: dict[str, Path], sizes: tuple[int, ...], loads: int = 3,
            diff: bool = False) -> dict[str, Any]:
    """Time to first draw (median of `loads`), the slider moved to each of `sizes` edges and back, screenshots."""
    firsts, errors, blocked = [], [], []
    for _ in range(loads):
        page = browser.new_page(viewport={"width": 1400, "height": 820})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://")
                   else (blocked.append(r.request.url), r.abort()))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        try:
            firsts.append(until(page, "window.circuitView && window.circuitView.firstDrawMs()"))
        except TimeoutError:
            raise TimeoutError(f"{path} did not draw; console errors: {errors}") from None
        if len(firsts) < loads:
            page.close()
    stats = page.evaluate("window.circuitView.stats()")
    if "main" in shots:
        page.screenshot(path=str(shots["main"]))
    slider = {}
    for size in sorted({min(s, stats["total"]) for s in sizes}):
        started = time.perf_counter()
        page.evaluate(f"window.circuitView.setSize({size})")
        until(page, f"window.circuitView.stats().edges === {size}")
        page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # drawn
        slider[size] = time.perf_counter() - started
        if size == stats["total"] and "all" in shots:
            page.screenshot(path=str(shots["all"]))
    started = time.perf_counter()
    page.evaluate(f"window.circuitView.setSize({stats['size']})")
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    back = time.perf_counter() - started
    if diff and "diff" in shots:
        page.select_option("#diff", "1")
        page.evaluate("window.circuitView.setSize(40)")
        page.screenshot(path=str(shots["diff"]))
    page.close()
    return {"bytes": path.stat().st_size, "first_draw_ms": statistics.median(firsts), "first_draw_all_ms": firsts,
            "edges_total": stats["total"], "edges_at_open": stats["edges"], "nodes": stats["nodes"],
            "slider_s": slider, "slider_back_s": back, "console_errors": errors, "blocked_requests": blocked}


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="out/view")
    parser.add_argument("--docs", action="store_true", help="also write the docs' page and screenshots")
    parser.add_argument("--cases", default="induction,spans,smollm2")
    parser.add_argument("--reuse", action="store_true", help="read the graphs a previous run saved in OUT")
    parser.add_argument("--all", action="store_true", help="also move the SmolLM2 slider to every edge (minutes)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        if "induction" in args.cases:
            saved = [out / f"induction_{name}.json" for name in INDUCTION_ENGINES]
            if args.reuse and all(path.exists() for path in saved):
                graphs = [HeadGraph.from_json(path) for path in saved]
            else:
                graphs = induction_graphs(n=16 if args.quick else 32)
                for graph, path in zip(graphs, saved):
                    graph.to_json(path)
            task = tasks.get("induction")
            curves = edge_curves(task.default_model(), task, graphs, n=16 if args.quick else 32)  # MIB's, per graph
            print("induction curves (patching ablation):\n" + curves.table())
            page = view.to_html(graphs, out / "induction.html", curves=curves)
            if args.docs:
                view.to_html(graphs, DOCS / "viewer" / "induction.html", curves=curves)
                graphs[0].draw(DOCS / "view_induction_figure.png")
            shots = {"main": out / "view_induction.png", "diff": out / "view_induction_diff.png"}
            results["induction"] = measure(browser, page, shots, (10**9,), diff=True)
            if args.docs:
                for name in ("view_induction.png", "view_induction_diff.png"):
                    (DOCS / name).write_bytes((out / name).read_bytes())
        if "spans" in args.cases:
            saved = out / "induction_spans.json"
            if args.reuse and saved.exists():
                graph = HeadGraph.from_json(saved)
            else:
                graph = induction_spans_graph(n=16 if args.quick else 32)
                graph.to_json(saved)
            page = view.to_html(graph, out / "induction_spans.html", default_edges=40)
            results["spans"] = measure(browser, page, {"main": out / "view_positional.png"}, (10**9,))
            if args.docs:
                view.to_html(graph, DOCS / "viewer" / "induction_spans.html", default_edges=40)
                (DOCS / "view_positional.png").write_bytes((out / "view_positional.png").read_bytes())
        if "smollm2" in args.cases:
            saved = out / "smollm2_edge_attribution.json"
            if args.reuse and saved.exists():
                graph = HeadGraph.from_json(saved)
            else:
                graph = smollm2_graph(n=4 if args.quick else 16)
                graph.to_json(saved)
            page = view.to_html(graph, out / "smollm2.html")
            sizes = (1000, 5000) + ((10**9,) if args.all else ())
            results["smollm2"] = measure(browser, page, {"main": out / "view_smollm2.png",
                                                        "all": out / "view_smollm2_all.png"}, sizes)
            graph.draw(out / "figure_smollm2.png")
            if args.docs:  # the docs embed its top 2,000 edges (the whole graph's page is ~4 MB)
                view.to_html(top_edges_only(graph, 2000), DOCS / "viewer" / "smollm2_capitals.html")
                for name in ("view_smollm2.png", "figure_smollm2.png"):
                    (DOCS / name).write_bytes((out / name).read_bytes())
        browser.close()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    for case, r in results.items():
        slider = ", ".join(f"{size} edges {seconds:.2f} s" for size, seconds in r["slider_s"].items())
        print(f"{case}: {r['bytes'] / 1e6:.2f} MB, {r['edges_total']} edges ({r['edges_at_open']} drawn at open), "
              f"first draw {r['first_draw_ms']:.0f} ms "
              f"(loads: {', '.join(f'{x:.0f}' for x in r['first_draw_all_ms'])}), "
              f"slider to {slider}, back {r['slider_back_s']:.2f} s; console errors {len(r['console_errors'])}, "
              f"blocked requests {len(r['blocked_requests'])}")


if __name__ == "__main__":
    main()
