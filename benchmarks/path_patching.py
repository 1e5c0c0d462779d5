"""Path patching: the batched engine vs a plain per-pair loop (the literal 4-step algorithm, hooks on full runs).

Same model, prompts and metric in one run; prints both times, their ratio, the max absolute difference
of the patched metric values, and the time of the work the engine cannot skip (each edge's own
downstream recompute, timed on its own) to say how far the engine is from that limit.
`python -m benchmarks.path_patching [--quick] [--cases a,b]`

  a  default induction model (2 layers x 4 heads), 8 prompts (per-call overhead dominates; goal >= 10x)
  b  4-layer x 8-head d_model-128 toy, 16 prompts of 64 tokens (compute dominates; goal >= 3x)

The per-pair loop is the tests' reference implementation (`tests/references.py`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any, Optional

import torch

from circuits import PromptBatch
from circuits.engines import kit
from circuits.engines import PathPatching
from circuits.graph import LOGITS
from tests.references import RandomTokens, max_difference, pair_loop


# --- timing ---------------------------------------------------------------------------------------------
def floor_time(model: Any, task: Any, batch: PromptBatch, engine: PathPatching) -> float:
    """Seconds for the work no exact method can skip: each edge's own downstream recompute (block L's
    rest and every later block, for every (sender, receiver, combination) copy), stacked as the engine does."""
    with torch.no_grad():
        runs = kit.PatchRuns.prepare(model, task, batch, engine.direction)
        senders, receivers, _ = engine.plan(model)
        per_copy = kit.copies_per_pass(model, runs.batch, engine.memory_mb)
        start = time.perf_counter()
        for layer in range(model.cfg.n_layers):
            n_senders = sum(1 for s in senders if getattr(s, "layer", -1) < layer)  # embed (no layer) comes first
            copies = n_senders * sum(1 for r in receivers if r.layer == layer) * len(engine._combos())
            for chunk in kit.chunks(copies, per_copy):
                runs.finish(layer, runs.base_resid[layer].new_zeros((len(chunk),) + runs.base_resid[layer].shape))
        return time.perf_counter() - start


def measure(label: str, model: Any, task: Any, n: int, engine: PathPatching, repeats: int = 1) -> dict[str, float]:
    batch = task.batch(model, n=n, seed=0)
    edge_count = len(engine.plan(model)[0])
    start = time.perf_counter()
    for _ in range(repeats):
        ours = engine.measure(model, task, batch).values
    t_engine = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    loop = pair_loop(model, task, batch, engine)
    t_loop = time.perf_counter() - start
    t_floor = floor_time(model, task, batch, engine)
    diff = max_difference(ours, loop)
    values = sum(len(v) for v in ours.values())
    device = model.cfg.device
    print(f"{label} on {device}: {len(ours)} edges ({values} patched values, {edge_count} senders)\n"
          f"  per-pair loop {t_loop:8.2f} s   engine {t_engine:7.3f} s   ratio {t_loop / t_engine:6.1f}x   "
          f"max |diff| {diff:.2e}\n"
          f"  unskippable downstream work {t_floor:7.3f} s: engine = {t_engine / t_floor:.2f}x that limit, "
          f"loop/limit = {t_loop / t_floor:.1f}x")
    return {"loop": t_loop, "engine": t_engine, "floor": t_floor, "diff": diff}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, float]]:
    with torch.no_grad():  # not torch.set_grad_enabled(False): a caller's autograd is left as it was
        return _main(argv)


def _main(argv: Optional[Sequence[str]]) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="a,b")
    parser.add_argument("--quick", action="store_true", help="fewer receivers, shorter prompts (about a minute)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on shared cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch CPU threads: {torch.get_num_threads()}")
    results = {}
    cases = args.cases.split(",")
    if "a" in cases:
        from tasks.induction import Induction

        task = Induction()
        model = task.default_model()
        engine = PathPatching(receivers=("L1H0", LOGITS) if args.quick else None)
        results["a"] = measure("a  induction model, 8 prompts", model, task, 8, engine, repeats=3)
    if "b" in cases:
        task = RandomTokens(seq_len=16 if args.quick else 64)
        model = task.default_model()
        engine = PathPatching(receivers=("L3H0", "L2H1", LOGITS) if args.quick else None)
        results["b"] = measure(f"b  4L x 8H d128 toy, 16 prompts of {task.seq_len}", model, task, 16, engine)
    return results


if __name__ == "__main__":
    main()
