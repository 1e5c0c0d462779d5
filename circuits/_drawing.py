"""Pictures of HeadGraphs (matplotlib, imported only when drawing; no global style is set)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from circuits.graph import HeadGraph


def _layered_positions(graph: "HeadGraph", nodes: list[str]) -> dict[str, tuple[float, float]]:
    """Heads placed by layer (y) and spread within their layer (x); embed below, logits above."""
    by_layer: dict[int, list[str]] = {}
    for n in nodes:
        by_layer.setdefault(graph.nx.nodes[n]["layer"], []).append(n)
    positions = {"embed": (0.0, -1.0), "logits": (0.0, float(graph.n_layers))}
    for layer, names in by_layer.items():
        for i, n in enumerate(sorted(names)):
            positions[n] = (i - (len(names) - 1) / 2, float(layer))
    return positions


def draw_graph(graph: "HeadGraph", path: Optional[Union[str, Path]] = None, title: Optional[str] = None,
               k: int = 8, by: str = "absolute") -> Any:
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import networkx as nx

    fig, (ax_heat, ax_graph) = plt.subplots(1, 2, figsize=(11, 4.5))
    matrix = graph.matrix().numpy()
    limit = max(abs(matrix[~(matrix != matrix)]).max(initial=0.0), 1e-9)
    image = ax_heat.imshow(matrix, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto", origin="lower")
    ax_heat.set_xticks(range(graph.n_heads))
    ax_heat.set_yticks(range(graph.n_layers))
    ax_heat.set_xlabel("head")
    ax_heat.set_ylabel("layer")
    ax_heat.set_title("head scores")
    fig.colorbar(image, ax=ax_heat)

    top = [name for name, _ in graph.top(k, by=by)]
    shown = graph.nx.subgraph(top + ["embed", "logits"])
    positions = _layered_positions(graph, top)
    edge_scores = [s or 0.0 for _, _, s in shown.edges(data="score")]
    nx.draw_networkx(shown, positions, ax=ax_graph, node_color="#cfe2f3", node_size=900, font_size=8,
                     width=[1 + 4 * abs(s) / limit for s in edge_scores], arrows=True,
                     edge_color=["#2166ac" if s >= 0 else "#b2182b" for s in edge_scores])
    ax_graph.set_title(f"top {len(top)} heads by {'|score|' if by == 'absolute' else 'score'} (blue +, red −)")
    ax_graph.axis("off")
    fig.suptitle(title or graph.meta.get("task", ""))
    meaning = graph.meta.get("score")
    if meaning:
        fig.text(0.5, 0.01, f"score: {meaning}", ha="center", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.05 if meaning else 0, 1, 1))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
