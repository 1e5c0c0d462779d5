"""The picture of a `Comparison` (matplotlib, imported only when drawing; no global style is set)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

if TYPE_CHECKING:
    from circuits.comparison import Comparison


def pair_matrix(names: list[str], values: dict[tuple[str, str], float]) -> np.ndarray:
    """A symmetric engine x engine matrix with 1 on the diagonal."""
    out = np.eye(len(names))
    for (a, b), value in values.items():
        i, j = names.index(a), names.index(b)
        out[i, j] = out[j, i] = value
    return out


def draw_comparison(result: "Comparison", path: Optional[Union[str, Path]] = None) -> Any:
    from circuits._drawing import figure, finish

    with_edges = result.edges is not None
    fig, grid = figure(path, (22.0 if with_edges else 16.0, 4.8), nrows=1, ncols=4 if with_edges else 3,
                       width_ratios=[1.6, 1.6, 1, 1] if with_edges else [1.6, 1, 1])
    axes = [fig.add_subplot(grid[i]) for i in range(4 if with_edges else 3)]
    ax_curve, ax_rho, ax_jac = axes[0], axes[-2], axes[-1]
    if with_edges:
        draw_edge_curves(result, axes[1])
    fraction = result.random.fraction
    draws = result.random_draws
    ax_curve.fill_between(fraction, [min(d) for d in draws], [max(d) for d in draws], color="#bbbbbb", alpha=0.5,
                          label=f"random circuits (up to {result.settings.get('draws')} per size, min-max)")
    ax_curve.plot(fraction, result.random.faithfulness, color="#777777", ls="--",
                  label=f"random mean  CPR {result.random.cpr:.2f}  CMD {result.random.cmd:.2f}")
    for name in result.engines:
        curve = result.curves[name]
        judged = "" if result.kind(name) == "heads" else "  (judged by edges →)"
        ax_curve.plot(fraction, curve.faithfulness, marker="o", ms=3, color=engine_color(result, name),
                      ls=":" if judged else "-", label=f"{name}  CPR {curve.cpr:.2f}  CMD {curve.cmd:.2f}{judged}")
    ax_curve.axhline(1.0, color="black", lw=0.6)
    smallest = min(f for f in fraction if f > 0)
    if smallest < 0.02:  # MIB's fractions of a large model: 0.1% .. 100%
        ax_curve.set_xscale("symlog", linthresh=smallest)
    ax_curve.set_xlim(0, 1.02)
    ax_curve.set_xlabel("fraction of heads kept (top by |score|; the rest mean-ablated)")
    ax_curve.set_ylabel("faithfulness (m_C − m_∅) / (m_full − m_∅)")
    ax_curve.legend(fontsize=7)
    names = result.engines
    for ax, values, title in ((ax_rho, result.spearman, "Spearman of |head scores|"),
                              (ax_jac, result.jaccard, f"Jaccard of top {result.k} heads")):
        matrix = pair_matrix(names, values)
        ax.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{result.task} on {result.model}: engines compared (n={result.settings.get('n')} prompts)")
    return finish(fig, path)


def engine_color(result: "Comparison", name: str) -> str:
    """One colour per engine in both curve panels (matplotlib's cycle, in the comparison's engine order)."""
    return f"C{result.engines.index(name) % 10}"


def draw_edge_curves(result: "Comparison", ax: Any) -> None:
    """The edge engines' MIB curves (signed selection, CPR's; |score| selection dashed) against random edge circuits."""
    edges = result.edges
    fractions = edges.random.fractions
    draws = edges.random_draws
    ax.fill_between(fractions, [min(d) for d in draws], [max(d) for d in draws], color="#bbbbbb", alpha=0.5,
                    label="random edge circuits (min-max)")
    ax.plot(fractions, edges.random.signed, color="#777777", ls="--",
            label=f"random mean  CPR {edges.random.cpr:.2f}  CMD {edges.random.cmd:.2f}")
    for name, curve in edges.curves.items():
        color = engine_color(result, name)
        ax.plot(fractions, curve.signed, marker="o", ms=3, color=color,
                label=f"{name}  CPR {curve.cpr:.2f}  CMD {curve.cmd:.2f}")
        ax.plot(fractions, curve.absolute, ls="--", color=color, lw=0.8)
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set_xscale("symlog", linthresh=min(f for f in fractions if f > 0))
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(f"fraction of the {edges.total_edges} edges kept (signed; dashed: |score|; {edges.ablation} ablation)")
    ax.set_ylabel("faithfulness of the edge circuit")
    ax.legend(fontsize=7)
