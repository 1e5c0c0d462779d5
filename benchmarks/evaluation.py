"""Edge-circuit evaluation: a whole MIB curve vs one plain forward pass, and vs a literal per-edge loop.

Same model, prompts and circuits in one run. Prints the time of one plain forward pass over the clean prompts, of a
whole curve (`circuits.evaluation.edge_curves`: MIB's 10 sizes, circuits chosen by signed and by |score|, so up to
20 circuits, plus the clean, corrupted and empty-circuit passes it needs), their ratio per size, and the time of the
literal reference (`tests.references.edge_circuit_metric`: each receiver's input rebuilt one edge at a time, each
head's attention run alone) on the same circuits, with the largest difference between the two.
`python -m benchmarks.evaluation [--cases a,b] [--repeats 3] [--loop-circuits 20]`

  a  default induction model (2 layers x 4 heads, attention only), induction task, 32 prompts
  b  4-layer x 8-head d_model-128 toy with MLPs, random tokens (32 tokens), 16 prompts
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any, Optional

import torch

import circuits
from circuits import forward, models, nodes
from circuits.engines.base import prompts, session
from circuits.evaluation import FRACTIONS, edge_curves
from tests.references import RandomTokens, edge_circuit_metric, literal_ablations, random_edge_graph


def random_graph(model: Any, seed: int = 0) -> circuits.HeadGraph:
    """Every edge of `model` scored at random, q/k/v apart (the shape edge attribution writes)."""
    return random_edge_graph(model, torch.Generator().manual_seed(seed), {"engine": "random_scores"})


def median_time(fn: Any, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(label: str, model: Any, task: Any, n: int, repeats: int, loop_circuits: int) -> dict[str, float]:
    graph = random_graph(model)
    total = len(nodes.all_edges(model))
    with session(model):
        batch = prompts(model, task, n, 1)
        t_forward, _ = median_time(lambda: forward.logits(model, batch.clean, batch.position), repeats)
    t_curve, curve = median_time(lambda: edge_curves(model, task, graph, n=n, seed=1, draws=0), repeats)
    chosen = list(dict.fromkeys(graph.circuit(fraction=f, by=by, total=total)
                                for by in ("signed", "absolute") for f in FRACTIONS))
    looped = chosen[:loop_circuits]
    with session(model):
        ablated = literal_ablations(model, batch, "patching")
        start = time.perf_counter()
        literal = [edge_circuit_metric(model, task, batch, c, ablated) for c in looped]
        t_loop = (time.perf_counter() - start) * len(chosen) / len(looped)
    result = circuits.evaluate(model, task, looped, n=n, seed=1)
    diff = max(abs(a - b) for a, b in zip(result.metrics, literal))
    per_size = t_curve / len(FRACTIONS) / t_forward
    extrapolated = "" if len(looped) == len(chosen) else f" (timed on {len(looped)} of them, scaled)"
    print(f"{label} on {model.cfg.device}: {total} edges, {len(chosen)} distinct circuits on the curve, {n} prompts\n"
          f"  plain forward {t_forward * 1e3:8.1f} ms   whole curve {t_curve:7.3f} s = {t_curve / t_forward:6.1f} "
          f"forward passes ({per_size:.2f} per size)\n"
          f"  literal per-edge loop {t_loop:8.2f} s{extrapolated}   ratio {t_loop / t_curve:6.1f}x   "
          f"max |diff| {diff:.2e}   CPR {curve.curves['random_scores'].cpr:.3f} CMD {curve.curves['random_scores'].cmd:.3f}")
    return {"forward_s": t_forward, "curve_s": t_curve, "per_size": per_size, "loop_s": t_loop, "diff": diff}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="a,b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-circuits", type=int, default=20, help="circuits the literal loop runs (scaled up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on shared cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {}
    for case in args.cases.split(","):
        if case == "a":
            task = __import__("tasks").get("induction")
            out[case] = measure("a: induction model", task.default_model(), task, 32, args.repeats, args.loop_circuits)
        elif case == "b":
            model = models.toy(models.ToyConfig(n_layers=4, n_heads=8, d_model=128, d_vocab=256, n_ctx=64,
                                                attn_only=False, d_mlp=512, seed=0))
            out[case] = measure("b: 4x8 toy with MLPs", model, RandomTokens(seq_len=32), 16, args.repeats,
                                args.loop_circuits)
    return out


if __name__ == "__main__":
    main()
