"""The induction circuit as a path-patching graph (Wang et al. 2022 style), on the default induction model.

    python -m analyses.induction_paths [--quick] [--out DIR]

Runs `PathPatching` (denoising) from every head (no embed sender) to every later head's q, k and v inputs and to the
logits, then writes into DIR:

- induction_paths.png: the circuit (edges with |score| >= --threshold, coloured by the input that carries
  most of the effect) beside the Q-, K- and V-composition scores from layer 0 into layer 1 and the direct
  effects on the logits;
- induction_paths.json: the HeadGraph (networkx node-link JSON);
- summary.json: the five strongest edges (the headline numbers of `make figures`) and the metric means.

It prints the strongest edges. Expected: the layer-0 previous-token head feeds the top induction head's
*key* input (K-composition). ``--quick`` patches fewer prompts; both need the cached default model (the
first call trains it, about a minute).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from circuits.engines import PathPatching  # noqa: E402
from circuits.graph import HeadGraph  # noqa: E402
from circuits.nodes import LOGITS, Head, all_heads  # noqa: E402
from tasks.induction import Induction  # noqa: E402
from analyses._script import figure_parser  # noqa: E402

COLOURS = {"q": "#1b9e77", "k": "#d95f02", "v": "#7570b3", "": "#444444"}


def composition(graph: HeadGraph, which: str) -> np.ndarray:
    """``[n_heads (layer 0), n_heads (layer 1)]`` scores of the edges L0Hi -> L1Hj through input `which`."""
    out = np.full((graph.n_heads, graph.n_heads), np.nan)
    for i in range(graph.n_heads):
        for j in range(graph.n_heads):
            data = graph.nx.get_edge_data(Head(0, i).name, Head(1, j).name)
            if data is not None:
                out[i, j] = data[f"score_{which}"]
    return out


def dominant(data: dict[str, Any]) -> str:
    """The input (q, k or v) whose own score is largest in size; "" for edges into the logits."""
    scores = {i: data[f"score_{i}"] for i in "qkv" if f"score_{i}" in data}
    return max(scores, key=lambda i: abs(scores[i])) if scores else ""


def draw(graph: HeadGraph, path: Path, threshold: float) -> None:
    fig, axes = plt.subplots(1, 5, figsize=(20, 4.2), gridspec_kw={"width_ratios": [1.6, 1, 1, 1, 0.5]})
    ax = axes[0]
    place = {LOGITS: (0.0, float(graph.n_layers))}
    for name in graph.heads():
        node = graph.nx.nodes[name]
        place[name] = (node["head"] - (graph.n_heads - 1) / 2, float(node["layer"]))
    strong = [(u, v, d) for u, v, d in graph.nx.edges(data=True) if abs(d["score"]) >= threshold]
    for u, v, d in strong:
        (x0, y0), (x1, y1) = place[u], place[v]
        which = dominant(d)
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(
            arrowstyle="-|>", color=COLOURS[which], lw=1 + 5 * min(abs(d["score"]), 1.0),
            linestyle="-" if d["score"] >= 0 else "--", shrinkA=14, shrinkB=14))
        t = 0.3 if v == LOGITS else 0.7  # labels where edges fan out, not where they meet
        ax.text(x0 + t * (x1 - x0), y0 + t * (y1 - y0), f"{which or 'direct'} {d['score']:+.2f}", fontsize=7,
                color=COLOURS[which], ha="center", bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
    for name, (x, y) in place.items():
        ax.scatter([x], [y], s=700, color="#cfe2f3", zorder=3, edgecolors="#555555")
        ax.text(x, y, name, ha="center", va="center", fontsize=8, zorder=4)
    ax.set_title(f"edges with |score| >= {threshold} (colour: q/k/v that carries most; dashed: negative)",
                 fontsize=8)
    ax.set_xlim(-graph.n_heads / 2 - 0.5, graph.n_heads / 2 + 0.5)
    ax.set_ylim(-0.6, graph.n_layers + 0.6)
    ax.axis("off")
    panels = [composition(graph, i) for i in "qkv"]
    limit = max(np.nanmax(np.abs(p)) for p in panels)
    for ax, which, panel in zip(axes[1:4], "qkv", panels):
        image = ax.imshow(panel, cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_title(f"{which.upper()}-composition (L0 -> L1 {which})")
        ax.set_xlabel("layer-1 receiver head")
        ax.set_ylabel("layer-0 sender head")
        ax.set_xticks(range(graph.n_heads))
        ax.set_yticks(range(graph.n_heads))
        for i in range(panel.shape[0]):
            for j in range(panel.shape[1]):
                ax.text(j, i, f"{panel[i, j]:+.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=axes[3])
    direct = graph.matrix().numpy().T
    axes[4].imshow(direct, cmap="RdBu", vmin=-limit, vmax=limit)
    axes[4].set_title("direct -> logits")
    axes[4].set_xlabel("layer")
    axes[4].set_ylabel("head")
    axes[4].set_xticks(range(graph.n_layers))
    axes[4].set_yticks(range(graph.n_heads))
    for (h, layer), value in np.ndenumerate(direct):
        axes[4].text(layer, h, f"{value:+.2f}", ha="center", va="center", fontsize=7)
    fig.suptitle(f"Induction circuit by path patching ({graph.meta['options']['direction']}, n={graph.meta['n']} prompts)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> HeadGraph:
    parser = figure_parser(__doc__, "figures/induction_paths", "fewer prompts (seconds once the model is cached)")
    parser.add_argument("--threshold", type=float, default=0.1, help="smallest |edge score| drawn")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    task = Induction()
    model = task.default_model()
    heads = tuple(head.name for head in all_heads(model))  # the figure is about heads: no embed sender
    graph = PathPatching(senders=heads).run(model, task, n=16 if args.quick else 128, seed=0)
    out = args.out
    draw(graph, out / "induction_paths.png", args.threshold)
    graph.to_json(out / "induction_paths.json")
    edges = sorted(graph.nx.edges(data=True), key=lambda e: -abs(e[2]["score"]))
    print(f"metric clean {graph.meta['metric_clean']:.3f}, corrupted {graph.meta['metric_corrupted']:.3f}")
    for u, v, d in edges[:8]:
        per_input = "  ".join(f"{i}={d[f'score_{i}']:+.3f}" for i in "qkv" if f"score_{i}" in d)
        print(f"  {u:>5} -> {v:<6} {d['score']:+.3f}  {per_input}")
    summary = {"headline": {f"{u} -> {v}": round(d["score"], 4) for u, v, d in edges[:5]},
               "metric_clean": graph.meta["metric_clean"], "metric_corrupted": graph.meta["metric_corrupted"],
               "n": graph.meta["n"], "seconds": round(time.perf_counter() - start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'induction_paths.png'}, .json and summary.json in {time.perf_counter() - start:.1f} s")
    return graph


if __name__ == "__main__":
    main()
