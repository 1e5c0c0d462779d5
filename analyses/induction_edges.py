"""Induction as edge circuits: each graph engine's circuit at 1%, 5% and 10% of the edges, and whether it holds the
two edges the mechanism needs.

    python -m analyses.induction_edges [--quick] [--out DIR] [--n N]

On the induction task's default model (2 layers x 4 heads, attention only: 81 edges), the previous-token head is
the layer-0 head that attends most to the previous position and the induction head the layer-1 head that attends
most to the token after the current token's earlier occurrence (both measured from attention patterns on clean
prompts, not taken from any engine). For every graph engine, ``graph.circuit(fraction=f, by=...)`` (MIB's
selection: the top ``int(f * 81)`` edges, pruned of edges on no embed -> logits path) at f = 1%, 5%, 10%, by
|score| and by signed score, and whether it holds previous-token head -> induction head <k> and induction head ->
logits. CD-T's edges measure two effects (head -> head "share", head -> logits "total"): its circuits are chosen
among each kind separately (a share circuit cannot hold the logits edge, a total circuit cannot hold the key edge),
which is said in the output.

Writes DIR/summary.json and prints a table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from analyses._script import at_most_two_threads, figure_parser

FRACTIONS = (0.01, 0.05, 0.1)
ENGINES: dict[str, tuple[str, dict[str, Any]]] = {
    "path_patching": ("path_patching", {}),
    "cdt": ("cdt", {}),
    "eap": ("edge_attribution", {"method": "eap"}),
    "eap-ig (inputs)": ("edge_attribution", {"method": "eap_ig_inputs"}),
    "eap-ig (activations)": ("edge_attribution", {"method": "eap_ig_activations"}),
}


def mechanism_heads(model: Any, task: Any, n: int = 32, seed: int = 0) -> tuple[str, str]:
    """(previous-token head, induction head) from attention patterns on clean prompts."""
    from circuits import forward, hooks
    from circuits.nodes import Head

    batch = task.batch(model, n=n, seed=seed)
    names = [hooks.site(model, layer, "pattern") for layer in (0, 1)]
    cache: dict[str, torch.Tensor] = {}
    fwd = [(name, (lambda t, hook, name=name: cache.__setitem__(name, t.detach()))) for name in names]
    with torch.no_grad(), hooks.attached(model, fwd):
        forward.logits(model, batch.clean)
    previous = cache[names[0]].diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))  # [head]
    # induction: at the read-out (x_k in the repeat), attention to the position after x_k's first occurrence
    rows = torch.arange(batch.size)
    first = (batch.clean[:, None, :] == batch.clean[rows, batch.position][:, None, None]).int().argmax(-1)[:, 0]
    induction = cache[names[1]][rows, :, batch.position, first + 1].mean(0)  # [head]
    return Head(0, int(previous.argmax())).name, Head(1, int(induction.argmax())).name


def circuits_of(graph: Any, fraction: float, by: str) -> dict[str, Any]:
    """{effect label: circuit}: one circuit, or one per effect where the graph's edges measure several."""
    effects = [e for e in graph.effects() if e]
    if len(effects) <= 1:
        return {"": graph.circuit(fraction=fraction, by=by)}
    return {effect: graph.circuit(fraction=fraction, by=by, effect=effect) for effect in sorted(effects)}


def run(engines: Sequence[str], n: int, seed: int = 0) -> dict[str, Any]:
    import circuits
    import tasks
    from circuits.nodes import Edge

    task = tasks.get("induction")
    model = task.default_model()
    previous, induction = mechanism_heads(model, task)
    key_edge, read_out = Edge(previous, induction, "k"), Edge(induction, "logits")
    results: dict[str, Any] = {"previous_token_head": previous, "induction_head": induction,
                               "key_edge": key_edge.name, "read_out_edge": read_out.name, "engines": {}}
    for label in engines:
        engine, options = ENGINES[label]
        graph = circuits.discover(model, task, engine=engine, n=n, seed=seed, progress=False, **options)
        rows = []
        for by in ("absolute", "signed"):
            for fraction in FRACTIONS:
                for effect, circuit in circuits_of(graph, fraction, by).items():
                    rows.append({"by": by, "fraction": fraction, "effect": effect, "edges": len(circuit),
                                 "k": int(fraction * graph.edge_total()), "key_edge": key_edge in circuit,
                                 "read_out_edge": read_out in circuit, "circuit": sorted(e.name for e in circuit)})
        ranked = sorted(((e, s) for effect in graph.effects() for e, s in graph.scored_edges(effect=effect)),
                        key=lambda pair: -abs(pair[1]))
        place = {str(e): (i + 1, s) for i, (e, s) in enumerate(ranked)}  # by |score|, every effect together
        results["engines"][label] = {"rows": rows, "edge_total": graph.edge_total(),
                                     "ranks": {name: place.get(name) for name in (key_edge.name, read_out.name)},
                                     "unscored_edges": graph.meta.get("unscored_edges", {}).get("words", "not stated")}
    return results


def table(results: dict[str, Any]) -> str:
    lines = ["| engine | by | fraction (top k) | effect | edges kept | key edge | read-out edge |", "|---|---|---|---|---|---|---|"]
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    for label, result in results["engines"].items():
        for row in result["rows"]:
            lines.append(f"| {label} | {row['by']} | {row['fraction']:.0%} ({row['k']}) | {row['effect'] or 'all'} | "
                         f"{row['edges']} | {yes(row['key_edge'])} | {yes(row['read_out_edge'])} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = figure_parser(__doc__, out="figures/induction_edges", quick="8 prompts, three engines")
    parser.add_argument("--n", type=int, default=None, help="prompts per engine run (default 32; --quick: 8)")
    args = parser.parse_args(argv)
    at_most_two_threads()
    engines = ("path_patching", "cdt", "eap") if args.quick else tuple(ENGINES)
    n = args.n or (8 if args.quick else 32)
    results = run(engines, n)
    print(f"previous-token head {results['previous_token_head']}, induction head {results['induction_head']} "
          f"(from attention patterns); key edge {results['key_edge']}, read-out edge {results['read_out_edge']}; "
          f"{n} prompts\n")
    print(table(results))
    for label, result in results["engines"].items():
        ranks = "; ".join(f"{name} " + ("unscored" if r is None else f"ranked {r[0]} by |score| ({r[1]:+.3f})")
                          for name, r in result["ranks"].items())
        print(f"- {label}: {ranks}; unscored edges: {result['unscored_edges']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"n": n, **results}, indent=1))
    return results


if __name__ == "__main__":
    main()
