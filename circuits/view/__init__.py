"""An interactive view of HeadGraphs: one self-contained HTML file that opens from disk in any browser.

The page embeds the graphs' data and inlines its scripts and styles (the viewer's own and Cytoscape.js, vendored in
``circuits/view/vendor/`` with its licence), so it needs no server and no network. `to_html` writes it (also as
``graph.to_html(path)`` and ``circuits view GRAPH.json ... --out FILE.html``); `notebook_html` is what a graph
shows in Jupyter (an iframe whose ``srcdoc`` is the page, so the notebook's own scripts and styles stay apart).
docs/view.md says what the view shows.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

from circuits.view.data import curve_data, graph_data, view_data

__all__ = ["CYTOSCAPE_VERSION", "curve_data", "graph_data", "page", "notebook_html", "to_html", "view_data"]

CYTOSCAPE_VERSION = "3.35.0"  # circuits/view/vendor/cytoscape.min.js, from the npm package cytoscape@3.35.0


def _asset(name: str) -> str:
    return resources.files("circuits.view").joinpath(name).read_text(encoding="utf-8")


def _script(text: str) -> str:
    """Text safe inside a <script> element: no ``</script`` (nor ``<!--``) can end or change it early."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def page(graphs: Union[Any, Sequence[Any]], *, labels: Optional[Sequence[str]] = None, curves: Any = None,
         default_edges: int = 300, by: str = "absolute", positional_edges: int = 2000,
         title: Optional[str] = None) -> str:
    """The page's HTML for one graph or several of one task (an engine switch and a diff view between them).
    `curves`: one faithfulness curve per graph (an `EdgeCurve`, a mapping, or None), or the `Curves` of
    `circuits.evaluation.edge_curves` (each graph's by its label, with the random circuits'); without them, each
    graph's ``meta["curve"]``. The slider starts at `default_edges` edges (or the whole graph, if smaller), ranked
    `by` ("absolute", "signed"). A graph scored per position (``meta["positions"]``) opens in columns, one per
    token or span, with its top `positional_edges` edges at positions (by |score| and by score) in the page."""
    graphs = [graphs] if hasattr(graphs, "nx") else list(graphs)
    data = view_data(graphs, labels, curves, default_edges=default_edges, by=by,
                     positional_edges=positional_edges)
    record = data["graphs"][0]["record"]
    title = title or " · ".join(str(record[k]) for k in ("task", "model") if k in record) or "circuit"
    vendor = _asset("vendor/cytoscape.min.js")
    return (_asset("page.html")
            .replace("{{title}}", html.escape(title))
            .replace("{{style}}", _asset("viewer.css"))
            .replace("{{data}}", _script(json.dumps(data, separators=(",", ":"))))
            .replace("{{cytoscape}}", _script(vendor))
            .replace("{{curve}}", _script(_asset("curve.js")))
            .replace("{{viewer}}", _script(_asset("viewer.js"))))


def to_html(graphs: Union[Any, Sequence[Any]], path: Union[str, Path], **options: Any) -> Path:
    """Write `page` (same options) to `path` (folders made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(graphs, **options), encoding="utf-8")
    return path


def notebook_html(graph: Any, height: int = 640) -> str:
    """The page inside an iframe (``srcdoc``), for Jupyter's ``_repr_html_``."""
    return (f'<iframe srcdoc="{html.escape(page(graph), quote=True)}" style="width:100%;height:{height}px;'
            f'border:1px solid #ddd" sandbox="allow-scripts"></iframe>')
