"""Pictures of HeadGraphs and comparisons (matplotlib, imported only when drawing; no global style is set).

One code path for every figure: `figure` opens it (constrained layout, so axis labels, colour bars and the footer
keep apart), `finish` writes it. `draw_graph` is what ``graph.draw()`` and ``circuits discover``'s PNG show: the head
scores as a heatmap (the top `k` heads outlined) beside the top edges as a graph, layers from the input (left) to
the read-out (right), with what the scores mean underneath.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from circuits.graph import HeadGraph

HELPS, HURTS = "#2166ac", "#b2182b"  # the view's colours: RdBu's ends


def figure(path: Optional[Union[str, Path]], figsize: tuple[float, float], **grid: Any) -> tuple[Any, Any]:
    """A figure with constrained layout and a grid of `grid` (matplotlib's GridSpec options); with a `path`, on the
    Agg backend (no display needed)."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize, layout="constrained")
    return fig, fig.add_gridspec(**grid)


def finish(fig: Any, path: Optional[Union[str, Path]], footer: Optional[str] = None) -> Any:
    """Add `footer` (wrapped; constrained layout keeps it clear of the axes) and save to `path` if given."""
    if footer:
        width = int(fig.get_figwidth() * 15)  # characters of 8-point text per line
        fig.supxlabel(textwrap.fill(footer, width), fontsize=8, color="#444")
    if path is not None:
        import matplotlib.pyplot as plt

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def title_of(meta: dict[str, Any]) -> str:
    """Engine · task · model, from a graph's record."""
    return " · ".join(str(meta[key]) for key in ("engine", "task", "model") if meta.get(key)) or "circuit"


def main_effect(graph: "HeadGraph") -> Optional[str]:
    """The effect most of the graph's scored edges measure (the one the top-edge panel ranks)."""
    counts = Counter(d.get("effect") for _, _, d in graph.nx.edges(data=True) if d.get("score") is not None)
    return counts.most_common(1)[0][0] if counts else None


def layered_positions(graph: "HeadGraph", nodes: set[str]) -> dict[str, tuple[float, float]]:
    """Columns for the layers that hold a drawn node (input left, read-out right; empty layers take no room) and,
    in a column, one row per node; odd columns shift half a row, so labels of neighbouring columns never meet."""
    layers = sorted({graph.nx.nodes[n]["layer"] for n in nodes if graph.nx.nodes[n].get("layer") is not None})
    column = {layer: i + 1 for i, layer in enumerate(layers)}
    by_column: dict[int, list[str]] = {}
    for n in nodes:
        layer = graph.nx.nodes[n].get("layer")
        if layer is not None:
            by_column.setdefault(column[layer], []).append(n)
    positions = {"embed": (0.0, 0.0), "logits": (float(len(layers) + 1), 0.0)}
    for x, names in by_column.items():
        names.sort(key=lambda n: (graph.nx.nodes[n].get("kind") == "mlp", graph.nx.nodes[n].get("head") or 0))
        shift = 0.5 if x % 2 else 0.0
        for i, n in enumerate(names):
            positions[n] = (float(x), i - (len(names) - 1) / 2 + shift)
    return positions


def draw_graph(graph: "HeadGraph", path: Optional[Union[str, Path]] = None, title: Optional[str] = None,
               k: int = 8, by: str = "absolute", edges: int = 12) -> Any:
    import matplotlib.patches as patches
    import networkx as nx
    import numpy as np

    fig, grid = figure(path, (13.0, 5.6), nrows=1, ncols=2, width_ratios=[1, 1.7])
    ax_heat, ax_graph = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    matrix = graph.matrix().numpy()
    limit = max(float(np.nanmax(np.abs(matrix), initial=0.0)), 1e-9)
    image = ax_heat.imshow(matrix, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto", origin="lower")
    step = 1 if graph.n_layers <= 16 else 5  # 30 layers: a tick every 5, so the labels stay apart
    ax_heat.set_xticks(range(0, graph.n_heads, 1 if graph.n_heads <= 16 else 4))
    ax_heat.set_yticks(range(0, graph.n_layers, step))
    ax_heat.set_xlabel("head")
    ax_heat.set_ylabel("layer")
    top = graph.top(k, by=by)
    for rank, (name, _) in enumerate(top, 1):
        node = graph.nx.nodes[name]
        ax_heat.add_patch(patches.Rectangle((node["head"] - 0.5, node["layer"] - 0.5), 1, 1, fill=False, lw=1.2))
    ax_heat.set_title(f"head scores (top {len(top)} by {'|score|' if by == 'absolute' else 'score'} outlined)",
                      fontsize=10)
    fig.colorbar(image, ax=ax_heat)

    effect = main_effect(graph)
    if effect is None and len(graph.effects()) > 1:  # the most edges say nothing of their effect: rank those
        key = abs if by == "absolute" else (lambda s: s)
        chosen = sorted(((u, v, d["score"]) for u, v, d in graph.nx.edges(data=True)
                         if d.get("effect") is None and d.get("score") is not None), key=lambda e: key(e[2]),
                        reverse=True)[:edges]
    else:
        chosen = graph.top_edges(edges, by=by, effect=effect)
    shown = nx.DiGraph()
    shown.add_weighted_edges_from(chosen, weight="score")
    positions = layered_positions(graph, {n for edge in chosen for n in edge[:2]})
    special = [n for n in shown.nodes if n in ("embed", "logits")]
    inner = [n for n in shown.nodes if n not in special]
    nx.draw_networkx_nodes(shown, positions, nodelist=inner, ax=ax_graph, node_size=620, edgecolors="#666",
                           node_shape="s",
                           node_color=[_diverging(graph.nx.nodes[n].get("score"), limit) for n in inner])
    nx.draw_networkx_nodes(shown, positions, nodelist=special, ax=ax_graph, node_size=1100, node_color="#555555",
                           node_shape="o")
    for n in shown.nodes:  # white text on dark nodes
        score = graph.nx.nodes[n].get("score")
        dark = n in special or (score is not None and abs(score) > 0.6 * limit)
        ax_graph.text(*positions[n], n, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    biggest = max((abs(s) for _, _, s in chosen), default=1.0) or 1.0
    nx.draw_networkx_edges(shown, positions, ax=ax_graph, arrows=True, arrowsize=9, node_size=620, node_shape="s",
                           connectionstyle="arc3,rad=0.12",
                           edge_color=[HELPS if s >= 0 else HURTS for _, _, s in chosen],
                           width=[0.6 + 3.4 * abs(s) / biggest for _, _, s in chosen], edgelist=[e[:2] for e in chosen])
    what = f"“{effect}” edges" if effect else "edges"
    ax_graph.set_title(f"top {len(chosen)} {what} by {'|score|' if by == 'absolute' else 'score'} (blue +, red −), "
                       "input → read-out", fontsize=10)
    ax_graph.margins(0.08)
    ax_graph.axis("off")
    fig.suptitle(title or title_of(graph.meta))
    meaning = graph.meta.get("score")
    return finish(fig, path, footer=f"score: {meaning}" if meaning else None)


def _diverging(score: Optional[float], limit: float) -> Any:
    from matplotlib import colormaps

    if score is None or score != score:
        return "#e6e6e6"
    return colormaps["RdBu"](0.5 + 0.5 * max(-1.0, min(1.0, score / limit)))
