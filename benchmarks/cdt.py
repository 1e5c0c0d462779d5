"""CD-T vs exact path patching: the same head graph, timed and rank-compared in one run.

The graph: every head -> logits, plus head -> head into 10 receivers (CD-T's top 10 heads by |node score|;
those in layer 0 receive from no head and drop out). CD-T runs first (`CDT(receiver_count=...)`); path patching then
measures the same edges (`PathPatching(receivers=<those heads> + logits, per_input=False)`: q, k and v
patched together). Printed: both times, their ratio (goal: CD-T >= 5x faster) and the Spearman rank
correlation of the two engines' head -> logits scores and of their head -> head scores.
`python -m benchmarks.cdt [--cases a,b,c] [--quick]`

  a  4-layer x 8-head d_model-128 toy (`RandomTokens().default_model()`), 16 prompts of 64 (--quick: 16)
  b  bundled SmolLM2-135M (270 heads), induction remapped onto its vocabulary, 8 prompts of 16 tokens
     (path patching takes minutes here; --quick: 3 receivers)
  c  agreement with activation patching (Spearman over every head's score) on the landed tasks'
     default models: induction and icl_regression, 32 prompts
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any, Optional

import torch

import circuits
from circuits import LOGITS, models
from circuits.comparison import spearman
from circuits.engines import CDT, PathPatching
from circuits.nodes import all_heads
from circuits.graph import HeadGraph

RECEIVERS = 10


def edge_scores(graph: HeadGraph, edges: list[tuple[str, str]]) -> list[float]:
    return [graph.nx.edges[e]["score"] for e in edges]


def timed(engine: Any, model: Any, task: Any, n: int, repeats: int) -> tuple[float, HeadGraph]:
    """Best of `repeats` runs (after one untimed warm-up run when repeating)."""
    best, graph = float("inf"), None
    for attempt in range(repeats + (repeats > 1)):
        start = time.perf_counter()
        graph = engine.run(model, task, n=n, seed=0)
        if attempt or repeats == 1:
            best = min(best, time.perf_counter() - start)
    return best, graph


def compare(label: str, model: Any, task: Any, n: int, receivers: int, repeats: int,
            loop: bool = False) -> dict[str, float]:
    t_cdt, cdt = timed(CDT(receiver_count=receivers), model, task, n, repeats)
    top = sorted({r for _, r in cdt.nx.edges() if r != LOGITS})  # CD-T's top receivers outside layer 0
    # head senders only: CD-T scores no embed or MLP edges, so the exact side measures the same edges
    heads = tuple(h.name for h in all_heads(model.cfg))
    path_patching = PathPatching(senders=heads, receivers=tuple(top) + (LOGITS,), per_input=False)
    t_exact, exact = timed(path_patching, model, task, n, repeats)
    if loop:  # the literal per-pair loop (two hooked full passes per edge), as the paper's baselines run
        from tests.references import pair_loop

        start = time.perf_counter()
        pair_loop(model, task, task.batch(model, n=n, seed=0), path_patching)
        t_loop = time.perf_counter() - start
        print(f"  per-pair path-patching loop {t_loop:8.2f} s: CD-T {t_loop / t_cdt:.1f}x faster", flush=True)
    to_logits = [(h, LOGITS) for h in sorted(exact.nx.predecessors(LOGITS))]
    between = [(s, r) for s, r in exact.nx.edges() if r != LOGITS]
    rho_nodes = spearman(edge_scores(cdt, to_logits), edge_scores(exact, to_logits))
    rho_edges = spearman(edge_scores(cdt, between), edge_scores(exact, between))
    print(f"{label} on {model.cfg.device}: {len(to_logits)} head->logits + {len(between)} head->head edges\n"
          f"  path patching {t_exact:8.2f} s   CD-T {t_cdt:7.2f} s   ratio {t_exact / t_cdt:6.1f}x   "
          f"Spearman head->logits {rho_nodes:+.3f}   head->head {rho_edges:+.3f}", flush=True)
    return {"path_patching_s": t_exact, "cdt_s": t_cdt, "ratio": t_exact / t_cdt,
            "spearman_logits": rho_nodes, "spearman_edges": rho_edges}


def agreement(n: int = 32) -> dict[str, float]:
    import tasks

    out = {}
    for name in tasks.ready_made():
        task = tasks.get(name)
        model = task.default_model()
        cdt = circuits.discover(model, task, engine="cdt", n=n, seed=0, receiver_count=0)
        patching = circuits.discover(model, task, engine="activation_patching", n=n, seed=0)
        noising = circuits.discover(model, task, engine="activation_patching", n=n, seed=0, direction="noising")
        rho = spearman(cdt.matrix().flatten().tolist(), patching.matrix().flatten().tolist())
        rho_noising = spearman(cdt.matrix().flatten().tolist(), noising.matrix().flatten().tolist())
        print(f"c  {name}: Spearman(CD-T, activation patching) over {cdt.matrix().numel()} heads = {rho:+.3f} "
              f"(noising: {rho_noising:+.3f}); top heads CD-T {[h for h, _ in cdt.top(3, by='signed')]}, "
              f"patching {[h for h, _ in patching.top(3, by='signed')]}", flush=True)
        out[name] = rho
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="a,b,c")
    parser.add_argument("--quick", action="store_true", help="shorter prompts, fewer receivers on SmolLM2")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on shared cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch CPU threads: {torch.get_num_threads()}")
    cases, results = args.cases.split(","), {}
    if "a" in cases:
        from tests.references import RandomTokens

        task = RandomTokens(seq_len=16 if args.quick else 64)
        results["a"] = compare(f"a  4L x 8H d128 toy, 16 prompts of {task.seq_len}", task.default_model(), task, 16,
                               RECEIVERS, repeats=3, loop=True)
    if "b" in cases:
        from benchmarks.patching import Remapped
        from tasks.induction import Induction

        table = torch.randperm(20_000, generator=torch.Generator().manual_seed(0))[:64] + 1_000
        task = Remapped(Induction(seq_len=16, min_length=3, max_length=6), table)
        receivers = 3 if args.quick else RECEIVERS
        results["b"] = compare(f"b  SmolLM2-135M, 8 prompts of 16, {receivers} receivers", models.bundled(), task, 8,
                               receivers, repeats=1)
    if "c" in cases:
        results["c"] = agreement()
    return results


if __name__ == "__main__":
    main()
