"""Edge attribution (EAP, EAP-IG) vs exact path patching: time and rank agreement, in one run.

Same model, prompts and metric for all three. Path patching scores the edges compared (q, k, v patched
together; ``per_input=False``, the score compared); EAP and EAP-IG score the model's whole edge graph
(embed, heads, MLPs -> q/k/v, MLPs, logits) in one run, and their head -> head (q+k+v summed) and
head -> logits edges are compared with path patching's. Spearman's rank correlation is reported on the
edges that matter (the top 5% by exact |score|) and on every compared edge; the peak resident memory
of the process during each edge-attribution run too.
`python -m benchmarks.edge_attribution [--quick] [--cases toy,smollm2] [--memory-mb 1024]`

  toy      4-layer x 8-head d_model-128 toy (`tests.references.RandomTokens`), 16 prompts of 32 tokens,
           every head -> head and head -> logits edge
  smollm2  the bundled SmolLM2-135M (30 layers x 9 heads), 8 prompts of 16 tokens: all 270 heads -> logits,
           then all heads -> the 10 receivers (layers 1+) with the largest exact |direct effect|
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from circuits import models
from circuits.comparison import spearman
from circuits.engines import EdgeAttribution, PathPatching
from circuits.engines.path_patching import top_receivers
from circuits.graph import LOGITS, HeadGraph
from tests.references import RandomTokens


def compare(exact: dict[tuple[str, str], float], graph: HeadGraph, top_fraction: float = 0.05) -> dict[str, float]:
    edges = sorted(exact, key=lambda e: abs(exact[e]), reverse=True)
    top = edges[:max(3, round(top_fraction * len(edges)))]
    ours = {e: graph.nx.edges[e]["score"] for e in edges}
    return {"edges": len(edges), "top": len(top),
            "spearman_top": spearman([exact[e] for e in top], [ours[e] for e in top]),
            "spearman_all": spearman([exact[e] for e in edges], [ours[e] for e in edges]),
            "sign_agreement_top": sum((exact[e] > 0) == (ours[e] > 0) for e in top) / len(top)}


def peak_rss_gib() -> float:
    """The process's resident-memory high-water mark (VmHWM), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    except OSError:
        pass


def timed(run: Any) -> tuple[Any, float, float]:
    reset_peak()
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start, peak_rss_gib()


def exact_edges(model: Any, task: Any, n: int, receivers: Optional[tuple[str, ...]]) -> tuple[dict, float]:
    graph, seconds, _ = timed(lambda: PathPatching(receivers=receivers, per_input=False).run(model, task, n=n))
    return {(u, v): s for u, v, s in graph.nx.edges(data="score")}, seconds


def measure(label: str, model: Any, task: Any, n: int, exact: dict, t_exact: float, memory_mb: float) -> dict:
    print(f"{label}: {len(exact)} edges compared; exact path patching {t_exact:.2f} s")
    out = {"path_patching_s": t_exact}
    for name, engine in (("EAP", EdgeAttribution(method="eap", memory_mb=memory_mb)),
                         ("EAP-IG (inputs, 5 steps)", EdgeAttribution(method="eap_ig_inputs", steps=5,
                                                                      memory_mb=memory_mb))):
        graph, seconds, peak = timed(lambda: engine.run(model, task, n=n))
        agreement = compare(exact, graph)
        out[name] = {"seconds": seconds, "ratio": t_exact / seconds, "peak_rss_gib": peak,
                     "graph_edges": graph.nx.number_of_edges(), **agreement}
        print(f"  {name:26s} {seconds:7.2f} s ({graph.nx.number_of_edges()} edges in its graph)  "
              f"{t_exact / seconds:7.1f}x faster   Spearman top {agreement['top']} (5%): "
              f"{agreement['spearman_top']:+.3f}   all: {agreement['spearman_all']:+.3f}   "
              f"sign agreement top: {agreement['sign_agreement_top']:.2f}   peak RSS {peak:.2f} GiB")
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="toy,smollm2")
    parser.add_argument("--quick", action="store_true", help="toy only, 8 prompts of 16 tokens (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on shared cores)")
    parser.add_argument("--memory-mb", type=float, default=1024.0, help="edge attribution's memory budget")
    parser.add_argument("--receivers", type=int, default=10, help="SmolLM2: receiver heads besides the logits")
    parser.add_argument("--smollm2-task", default="random", choices=["random", "induction"],
                        help="random tokens (logit difference of random answer and foil) or induction prompts "
                             "(a 4-8 token segment repeated; tokens from the first 8192 ids)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch CPU threads: {torch.get_num_threads()}")
    results: dict[str, Any] = {}
    cases = ["toy"] if args.quick else args.cases.split(",")
    if "toy" in cases:
        task = RandomTokens(seq_len=16 if args.quick else 32)
        model = task.default_model()
        n = 8 if args.quick else 16
        exact, t_exact = exact_edges(model, task, n, None)
        results["toy"] = measure(f"toy 4L x 8H, {n} prompts of {task.seq_len}", model, task, n, exact, t_exact,
                                 args.memory_mb)
    if "smollm2" in cases:
        if args.smollm2_task == "induction":
            from tasks.induction import Induction

            task = Induction(seq_len=16, min_length=4, max_length=8, d_vocab=8192)
        else:
            task = RandomTokens(seq_len=16)
        model = models.bundled()
        to_logits, t_logits = exact_edges(model, task, 8, (LOGITS,))
        graph = HeadGraph(n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads)
        for (u, v), s in to_logits.items():
            if not u.startswith("L0H"):  # a receiver needs senders before it
                graph.add_node(u, s)
        receivers = top_receivers(graph, args.receivers, include_logits=False)
        print(f"SmolLM2 heads -> logits: {t_logits:.2f} s; receivers: {', '.join(receivers)}")
        to_heads, t_heads = exact_edges(model, task, 8, receivers)
        results["smollm2"] = measure(f"SmolLM2 {task.name}, 8 prompts of 16 (heads -> logits and -> {len(receivers)} heads)",
                                     model, task, 8, {**to_logits, **to_heads}, t_logits + t_heads, args.memory_mb)
        results["smollm2"]["receivers"] = receivers
    return results


if __name__ == "__main__":
    main()
