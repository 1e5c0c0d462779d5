"""Ground truth (MIB's InterpBench column): AUROC of every graph engine's edge ranking against a known circuit.

    python -m analyses.ground_truth [--quick] [--out DIR] [--n N]

For each hand-weighted model of `tasks.known_circuits` (whose circuit is known by construction) and each graph
engine, the engine's graph is read as a score per edge of the model's one edge graph (`circuits.engines.coverage`:
embed, heads and MLPs as senders; every head's q, k and v, every MLP and the logits as receivers), and the edges are
ranked by |score| (and by score, signed). The AUROC of that ranking against the known edges is computed by the rank
formula (Mann-Whitney U over P known and N other edges: (sum of the known edges' ranks - P(P+1)/2) / (P N), tied
scores sharing their average rank); edges an engine leaves unscored rank last, tied. An edge into a head that an
engine scores only as a whole receiver (CD-T's head -> head shares, path patching with ``per_input=False``) gives
that score to each of its q, k and v edges.

Writes DIR/summary.json (every AUROC, the known edges' ranks, each engine's ``unscored_edges`` words) and prints the
table, then which engines find each circuit: every known edge ranked above every other edge (AUROC 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from analyses._script import at_most_two_threads, figure_parser

ENGINES: dict[str, tuple[str, dict[str, Any]]] = {  # label -> (engine, options)
    "path_patching": ("path_patching", {}),
    "path_patching (frozen MLPs)": ("path_patching", {"freeze_mlps": True}),
    "cdt": ("cdt", {}),
    "eap": ("edge_attribution", {"method": "eap"}),
    "eap-ig (inputs)": ("edge_attribution", {"method": "eap_ig_inputs"}),
    "eap-ig (activations)": ("edge_attribution", {"method": "eap_ig_activations"}),
    "eap (mib: noising)": ("edge_attribution", {"method": "eap", "convention": "mib"}),
    "eap-ig (inputs, mib: noising)": ("edge_attribution", {"method": "eap_ig_inputs", "convention": "mib"}),
}
QUICK_ENGINES = ("path_patching", "cdt", "eap", "eap-ig (inputs)")


def edge_scores(graph: Any, model: Any) -> dict[Any, Optional[float]]:
    """Every `Edge` of `model`'s edge graph -> the graph's score for it (None: unscored), from `graph.scored_edges`
    (a head receiver's input: its own score, else the score of the inputs measured together). A graph whose edges
    measure several effects (CD-T: head -> head shares, head -> logits totals) gives each kind's scores side by side."""
    from circuits.nodes import all_edges

    scored: dict[Any, float] = {}
    for effect in graph.effects():
        scored.update(graph.scored_edges(effect=effect))
    return {edge: scored.get(edge) for edge in all_edges(model)}


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ascending ranks, tied values sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        for i in order[start:stop + 1]:
            ranks[i] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def auroc(scores: dict[Any, Optional[float]], known: set[Any], signed: bool = False) -> float:
    """AUROC of ranking edges by |score| (or score) against `known`, by the rank formula; unscored edges last."""
    missing = known - set(scores)
    if missing:
        raise ValueError(f"known edges {sorted(missing, key=str)} are not edges of the model's graph")
    edges = list(scores)
    values = [-math.inf if scores[e] is None else (scores[e] if signed else abs(scores[e])) for e in edges]
    ranks = average_ranks(values)
    positives = [r for e, r in zip(edges, ranks) if e in known]
    p, n = len(positives), len(edges) - len(positives)
    return (sum(positives) - p * (p + 1) / 2) / (p * n)


def known_ranks(scores: dict[Any, Optional[float]], known: set[Any]) -> dict[str, Any]:
    """Each known edge's place in the |score| ranking (1 = first; unscored: None) and its score."""
    ordered = sorted((e for e in scores if scores[e] is not None), key=lambda e: -abs(scores[e]))
    place = {e: i + 1 for i, e in enumerate(ordered)}
    return {str(e): {"rank": place.get(e), "score": scores[e]} for e in sorted(known, key=str)}


def run(variants: Sequence[str], engines: Sequence[str], n: int, seed: int = 0) -> dict[str, Any]:
    import circuits
    from tasks.known_circuits import known

    results: dict[str, Any] = {}
    for variant in variants:
        task = known(variant)
        model = task.default_model()
        for label in engines:
            engine, options = ENGINES[label]
            graph = circuits.discover(model, task, engine=engine, n=n, seed=seed, progress=False, **options)
            scores = edge_scores(graph, model)
            results.setdefault(label, {})[variant] = {
                "auroc": auroc(scores, set(task.edges)), "auroc_signed": auroc(scores, set(task.edges), signed=True),
                "known": known_ranks(scores, set(task.edges)), "edges": len(scores),
                "unscored": sum(s is None for s in scores.values()),
                "unscored_edges": graph.meta.get("unscored_edges", {}).get("words", "not stated")}
    return results


def table(results: dict[str, Any], variants: Sequence[str]) -> str:
    header = "| engine | " + " | ".join(f"{v}: AUROC \\|score\\| (signed)" for v in variants) + " |"
    lines = [header, "|---|" + "---|" * len(variants)]
    for label, row in results.items():
        cells = [f"{row[v]['auroc']:.3f} ({row[v]['auroc_signed']:.3f})" for v in variants]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(results: dict[str, Any], variants: Sequence[str]) -> list[str]:
    """Per engine and model: finds the circuit (AUROC 1: every known edge above every other) or not, and why."""
    out = []
    for label, row in results.items():
        for v in variants:
            r = row[v]
            if r["auroc"] >= 1.0 - 1e-12:
                out.append(f"{label} on {v}: finds the circuit (every known edge ranks above every other edge)")
                continue
            low = {e: k for e, k in r["known"].items() if k["rank"] is None or k["rank"] > len(r["known"])}
            described = ", ".join(f"{e} " + ("unscored" if k["rank"] is None else f"ranked {k['rank']} "
                                            f"(score {k['score']:.3g})") for e, k in low.items())
            out.append(f"{label} on {v}: does not (AUROC {r['auroc']:.3f}): {described or 'ties with other edges'}; "
                       f"{r['unscored']} of {r['edges']} edges unscored")
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = figure_parser(__doc__, out="figures/ground_truth", quick="8 prompts, four engines")
    parser.add_argument("--n", type=int, default=None, help="prompts per engine run (default 32; --quick: 8)")
    args = parser.parse_args(argv)
    at_most_two_threads()
    from tasks.known_circuits import VARIANTS

    engines = QUICK_ENGINES if args.quick else tuple(ENGINES)
    n = args.n or (8 if args.quick else 32)
    results = run(VARIANTS, engines, n)
    print(f"AUROC of each engine's edge ranking against the known circuit ({n} prompts; unscored edges last)\n")
    print(table(results, VARIANTS))
    print()
    for line in verdicts(results, VARIANTS):
        print("-", line)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"n": n, "results": results,
               "headline": {f"{label}/{v}": row[v]["auroc"] for label, row in results.items() for v in VARIANTS}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
