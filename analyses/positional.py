"""Position-aware against plain edge circuits: IOI on the bundled SmolLM2 and induction on its default model.

    python -m analyses.positional [--quick] [--out DIR] [--tasks ioi induction]

For each task, one edge-attribution run with ``positions="spans"`` (docs/positional.md) gives both rankings: the
graph's ``score`` attributes are the plain scores, its ``positions*`` attributes the same sums split by span. At each
size, a fraction f of the positional edges (every edge at every span: ``edge_total() x spans``):

- the **positional** circuit: ``graph.circuit(fraction=f, by=..., positional=True)`` (top edges at a span, pruned);
- the **plain** circuit with as many edges: ``graph.circuit(k=len(positional), by=...)`` (each edge at every token),
  pruned again, so either may hold fewer edges than asked (both counts are reported);

each chosen by signed score and by |score|, all evaluated in one `circuits.evaluate` call (``ablation="patching"``,
held-out prompts of seed 1; the engine's are seed 0), with the whole positional circuit (every edge at every span)
as a check: its faithfulness must be 1. The areas follow `circuits.evaluation.curves.EdgeCurve`: CPR = trapezoid
area under f over the fractions asked (signed selection), CMD = area under |1 - f| (|score| selection), both
integrated over the same x for the two kinds (the positional fractions; the plain circuit is matched in count), and
divided by the width of that range (``cpr_mean``, ``cmd_mean``: the mean over the range) for reading.

Which spans the top edges act at: the positional circuit's edges per span at each size, and the top 10 positional
edges by |score|. For induction, the previous-token head -> induction head key edge (the heads from attention
patterns, `analyses.induction_edges.mechanism_heads`) at each span: its rank among every positional edge and its
score, under edge attribution and under path patching per span (the metric change when the edge is patched at that
span alone, denoising and noising; seconds on the tiny model). Writes DIR/summary.json and DIR/faithfulness.png
and prints a summary (with the seconds of each step: on SmolLM2, choosing is not free: every positional selection
lists and sorts every edge at every span, 739 266 of them).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from analyses._script import at_most_two_threads, figure_parser
from circuits.errors import InvalidOptionError, UnknownNameError

SELECTIONS = ("signed", "absolute")
KINDS = ("positional", "plain")
DIRECTIONS = ("denoising", "noising")


@dataclass(frozen=True)
class Settings:
    """One task's run: edge attribution on `n` prompts (seed 0), evaluation on `n_eval` (seed 1), `fractions` of the
    positional edges."""

    n: int
    n_eval: int
    fractions: tuple[float, ...]
    method: str = "eap_ig_inputs"
    steps: int = 5


# IOI: what one thread of the shared machine evaluates in a few minutes (each SmolLM2 circuit ~10 s on 16 prompts)
FULL = {"ioi": Settings(n=16, n_eval=16, fractions=(0.005, 0.01, 0.02), steps=3),
        "induction": Settings(n=32, n_eval=32, fractions=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2))}
QUICK = {"induction": Settings(n=4, n_eval=4, fractions=(0.01, 0.05), method="eap", steps=1)}


def load(name: str, model: Any = None) -> tuple[Any, Any]:
    """(task, model) for `name`: ``"ioi"`` (the shipped set, the bundled SmolLM2) or ``"induction"`` (the
    registered task, its default model); `model` replaces the default model."""
    import tasks

    if name == "ioi":
        task = tasks.prompts(tasks.ioi.DATA)
    elif name == "induction":
        task = tasks.get("induction")
    else:
        raise UnknownNameError("task", name, list(FULL))
    return task, model if model is not None else task.default_model()


def run_task(name: str, settings: Settings, model: Any = None) -> dict[str, Any]:
    """One task's summary: settings, seconds, each size's circuits (edges kept, faithfulness, spans), the areas, the
    top edges and, for induction, the key edge; `model` as in `load`."""
    import circuits

    task, model = load(name, model)
    say(name, "edge attribution per span")
    start = time.perf_counter()
    graph = circuits.discover(model, task, engine="edge_attribution", positions="spans", n=settings.n, seed=0,
                              method=settings.method, steps=settings.steps, progress=False)
    discover_s = time.perf_counter() - start
    say(name, f"{discover_s:.0f} s; choosing circuits")
    start = time.perf_counter()
    labels = graph.position_kind()[1]
    ranked = ranking(graph)
    chosen = choose(graph, settings.fractions)
    whole = frozenset(edge for edge, _ in ranked)  # every scored edge at every span: the model itself
    circuits_list = list(dict.fromkeys([c for row in chosen for c in row["circuits"].values()] + [whole]))
    choose_s = time.perf_counter() - start
    say(name, f"evaluating {len(circuits_list)} circuits")
    start = time.perf_counter()
    result = circuits.evaluate(model, task, circuits_list, ablation="patching", n=settings.n_eval, seed=1)
    evaluate_s = time.perf_counter() - start
    faithful = dict(zip(circuits_list, result.faithfulness))
    rows = [size_row(row, faithful, labels) for row in chosen]
    summary = {"settings": asdict(settings), "labels": labels, "edge_total": graph.edge_total(),
               "positional_total": graph.edge_total() * len(labels), "scored_positional": len(ranked),
               "seconds": {"discover": round(discover_s, 1), "choose": round(choose_s, 1),
                           "evaluate": round(evaluate_s, 1)},
               "circuits_evaluated": len(circuits_list), "full": result.full, "empty": result.empty,
               "whole_positional_faithfulness": faithful[whole],
               "shared_prompts": shared_prompts(model, task, settings),
               "sizes": rows, "areas": areas(rows, settings.fractions),
               "top_edges": [{"edge": edge.name, "score": score} for edge, score in ranked[:10]]}
    if name == "induction":
        edge = mechanism_edge(model, task)
        summary["key_edge"] = key_edge(edge, graph, ranked, labels)
        summary["key_edge_path_patching"] = exact_key_edge(model, task, edge, settings.n)
    return summary


def say(name: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {text}", flush=True)


def ranking(graph: Any, positional: bool = True) -> list[tuple[Any, float]]:
    """Every positional (or plain) edge with its score, by |score| (largest first; ties by name: a stable order)."""
    return sorted(graph.scored_edges(positional=positional), key=lambda pair: (-abs(pair[1]), pair[0].name))


def choose(graph: Any, fractions: Sequence[float]) -> list[dict[str, Any]]:
    """Per fraction and selection: the positional circuit and the plain one with as many edges."""
    rows = []
    for fraction in fractions:
        for by in SELECTIONS:
            positional = graph.circuit(fraction=fraction, by=by, positional=True)
            plain = graph.circuit(k=len(positional), by=by)
            rows.append({"fraction": fraction, "by": by, "asked": int(fraction * graph.edge_total()
                                                                        * len(graph.position_kind()[1])),
                         "circuits": {"positional": positional, "plain": plain}})
    return rows


def size_row(row: dict[str, Any], faithful: dict[Any, float], labels: Sequence[str]) -> dict[str, Any]:
    """One size's record: edges kept and faithfulness of each kind, the positional circuit's edges per span."""
    positional, plain = row["circuits"]["positional"], row["circuits"]["plain"]
    spans = Counter(edge.position for edge in positional)
    return {"fraction": row["fraction"], "by": row["by"], "asked": row["asked"],
            "edges": {"positional": len(positional), "plain": len(plain)},
            "faithfulness": {kind: faithful[row["circuits"][kind]] for kind in KINDS},
            "per_span": {label: spans.get(label, 0) for label in labels},
            "plain_edges_in_positional": len({edge.plain for edge in positional})}


def areas(rows: Sequence[dict[str, Any]], fractions: Sequence[float]) -> dict[str, dict[str, float]]:
    """CPR and CMD per kind over `fractions` (`EdgeCurve`'s), and each divided by the range's width."""
    from circuits.evaluation.curves import EdgeCurve

    if len(fractions) < 2:
        return {}
    width = fractions[-1] - fractions[0]
    out = {}
    for kind in KINDS:
        curve = {by: [r["faithfulness"][kind] for r in rows if r["by"] == by] for by in SELECTIONS}
        edges = {by: [r["edges"][kind] for r in rows if r["by"] == by] for by in SELECTIONS}
        edge_curve = EdgeCurve(list(fractions), curve["signed"], curve["absolute"], edges["signed"], edges["absolute"])
        out[kind] = {"cpr": edge_curve.cpr, "cmd": edge_curve.cmd, "cpr_mean": edge_curve.cpr / width,
                     "cmd_mean": edge_curve.cmd / width}
    return out


def shared_prompts(model: Any, task: Any, settings: Settings) -> int:
    """How many of the evaluation's prompts (seed 1) the engine also saw (seed 0): same tokens up to the read-out."""
    def read(batch: Any) -> set[tuple[int, ...]]:
        return {tuple(row[:int(p) + 1].tolist()) for row, p in zip(batch.clean, batch.position)}

    return len(read(task.batch(model, n=settings.n, seed=0)) & read(task.batch(model, n=settings.n_eval, seed=1)))


def mechanism_edge(model: Any, task: Any) -> Any:
    """The previous-token head -> induction head key edge, the heads from attention patterns on clean prompts."""
    from analyses.induction_edges import mechanism_heads
    from circuits.nodes import Edge

    return Edge(*mechanism_heads(model, task), "k")


def key_edge(edge: Any, graph: Any, ranked: Sequence[tuple[Any, float]], labels: Sequence[str]) -> dict[str, Any]:
    """`edge`'s plain rank and score, and at each span its rank among every positional edge (by |score|, `ranked`)
    and its score."""
    place = {e: (i + 1, s) for i, (e, s) in enumerate(ranked)}
    plain = ranking(graph, positional=False)
    plain_place = {e: (i + 1, s) for i, (e, s) in enumerate(plain)}
    return {"edge": edge.name, "previous_token_head": edge.sender.name, "induction_head": edge.receiver.name,
            "plain": {"rank": plain_place[edge][0], "score": plain_place[edge][1], "of": len(plain)},
            "at": {label: {"rank": place[edge.at(label)][0], "score": place[edge.at(label)][1]} for label in labels},
            "of": len(ranked)}


def exact_key_edge(model: Any, task: Any, edge: Any, n: int) -> dict[str, Any]:
    """`key_edge` under path patching per span (each edge patched at each span alone), both directions."""
    import circuits

    out = {}
    for direction in DIRECTIONS:
        start = time.perf_counter()
        graph = circuits.discover(model, task, engine="path_patching", positions="spans", n=n, seed=0,
                                  direction=direction, progress=False)
        out[direction] = {**key_edge(edge, graph, ranking(graph), graph.position_kind()[1]),
                          "seconds": round(time.perf_counter() - start, 1)}
    return out


def run(names: Sequence[str], quick: bool = False, models: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Every task's summary by name; `models` replaces a task's default model (e.g. an already loaded SmolLM2)."""
    table = QUICK if quick else FULL
    unknown = [name for name in names if name not in table]
    if unknown:
        raise InvalidOptionError(f"tasks={list(names)!r}; {'--quick runs' if quick else 'expected'} "
                                 f"{sorted(table)} (unknown: {unknown})")
    return {name: run_task(name, table[name], (models or {}).get(name)) for name in names}


def report(results: dict[str, Any]) -> str:
    """A readable summary: per task, faithfulness at each size, the areas, spans, top edges, the key edge."""
    lines = []
    for name, r in results.items():
        s = r["settings"]
        lines += [f"## {name}: {s['method']} (steps {s['steps']}) on {s['n']} prompts, positions='spans' "
                  f"({r['seconds']['discover']} s; choosing the circuits {r['seconds']['choose']} s); evaluate: "
                  f"patching on {s['n_eval']} held-out prompts ({r['shared_prompts']} shared with the engine's), "
                  f"{r['circuits_evaluated']} circuits "
                  f"({r['seconds']['evaluate']} s)",
                  f"edges {r['edge_total']}, positional {r['positional_total']} (spans {', '.join(r['labels'])}); "
                  f"m_full {r['full']:.3f}, m_empty {r['empty']:.3f}; whole positional circuit f = "
                  f"{r['whole_positional_faithfulness']:.6f}", "",
                  "| by | fraction (asked) | positional edges | f positional | plain edges | f plain | "
                  "per span (positional) |", "|---|---|---|---|---|---|---|"]
        for row in r["sizes"]:
            spans = ", ".join(f"{k} {v}" for k, v in row["per_span"].items() if v)
            lines.append(f"| {row['by']} | {row['fraction']:.1%} ({row['asked']}) | {row['edges']['positional']} | "
                         f"{row['faithfulness']['positional']:.3f} | {row['edges']['plain']} | "
                         f"{row['faithfulness']['plain']:.3f} | {spans} |")
        for kind, a in r["areas"].items():
            lines.append(f"- {kind}: CPR {a['cpr']:.5f} (mean f {a['cpr_mean']:.3f}), CMD {a['cmd']:.5f} "
                         f"(mean |1 - f| {a['cmd_mean']:.3f})")
        lines.append("- top edges: " + ", ".join(f"{t['edge']} {t['score']:+.3f}" for t in r["top_edges"]))
        if "key_edge" in r:
            lines.append(key_line(f"key edge {r['key_edge']['edge']} ({r['settings']['method']})", r["key_edge"]))
        for direction, k in r.get("key_edge_path_patching", {}).items():
            lines.append(key_line(f"the same under path patching per span ({direction}, {k['seconds']} s)", k))
        lines.append("")
    return "\n".join(lines)


def key_line(title: str, k: dict[str, Any]) -> str:
    """One line of `key_edge`'s record: the plain rank and score, then each span's."""
    return (f"- {title}: plain rank {k['plain']['rank']}/{k['plain']['of']} ({k['plain']['score']:+.3f}); per span "
            f"(rank of {k['of']}): " + ", ".join(f"{label} {v['rank']} ({v['score']:+.3f})"
                                                 for label, v in k["at"].items()))


def draw(results: dict[str, Any], path: Path) -> None:
    """Faithfulness against the fraction of positional edges asked (the plain circuit as many edges), positional and
    plain, by selection, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, PercentFormatter

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for kind, colour in zip(KINDS, ("C0", "C1")):
            for by, style in zip(SELECTIONS, ("--", "-")):
                rows = [row for row in r["sizes"] if row["by"] == by]
                ax.plot([row["fraction"] for row in rows], [row["faithfulness"][kind] for row in rows], style,
                        marker="o", color=colour, label=f"{kind}, by {'|score|' if by == 'absolute' else by}")
        ax.set(xscale="log", xlabel="size: fraction of the positional edges", ylabel="faithfulness", title=name)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([row["fraction"] for row in r["sizes"]])
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = figure_parser(__doc__, out="figures/positional", quick="induction only: EAP on 4 prompts, two sizes")
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks to run (default: ioi induction; --quick: "
                                                                 "induction)")
    args = parser.parse_args(argv)
    at_most_two_threads()
    names = args.tasks or list(QUICK if args.quick else FULL)
    results = run(names, quick=args.quick)
    print(report(results))
    args.out.mkdir(parents=True, exist_ok=True)
    draw(results, args.out / "faithfulness.png")
    (args.out / "summary.json").write_text(json.dumps({"quick": args.quick, "tasks": results,
                                                       "headline": headline(results)}, indent=1))
    return results


def headline(results: dict[str, Any]) -> dict[str, float]:
    """Per task and kind, faithfulness at 1% by |score| (where asked) and the areas' means."""
    out: dict[str, float] = {}
    for name, r in results.items():
        for row in r["sizes"]:
            if row["fraction"] == 0.01 and row["by"] == "absolute":
                out.update({f"{name}/f@1%/{kind}": row["faithfulness"][kind] for kind in KINDS})
        for kind, a in r["areas"].items():
            out.update({f"{name}/cpr_mean/{kind}": a["cpr_mean"], f"{name}/cmd_mean/{kind}": a["cmd_mean"]})
        if "key_edge" in r:
            out[f"{name}/key_edge_rank@next"] = r["key_edge"]["at"]["next"]["rank"]
    return out


if __name__ == "__main__":
    main()
