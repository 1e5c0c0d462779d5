"""All-head activation patching: ours vs TransformerLens's `get_act_patch_attn_head_out_all_pos`.

Same model, prompts and metric in one run, interleaved repetitions, median times; prints both times, their ratio
and the max absolute difference of the patched metric values.
`python -m benchmarks.patching [--cases a,b,c] [--repeats R] [--threads T]`

  a  2-layer x 8-head toy, 8 prompts of 16 tokens      (per-call overhead dominates)
  b  4-layer x 8-head d_model-128 toy, 16 prompts of 64 (compute dominates)
  c  bundled SmolLM2-135M (270 heads), 8 prompts of 16 (compute dominates; loads in ~35 s)
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from circuits import PromptBatch, models
from circuits.engines import ActivationPatching
from tasks.induction import Induction
from tests.references import tl_patched


@dataclass(frozen=True)
class Remapped:
    """The induction task with its 64 token ids mapped onto ordinary tokens of a large vocabulary."""

    task: Induction
    table: torch.Tensor
    name: str = "induction-remapped"

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        b = self.task.sample_batch(n, seed)
        t = self.table
        return replace(b, clean=t[b.clean], corrupted=t[b.corrupted], answer=t[b.answer], foil=t[b.foil])

    def metric(self, logits: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        return self.task.metric(logits, batch)


def smollm2_induction() -> Remapped:
    """Induction prompts of 16 tokens on 64 ordinary tokens of SmolLM2's vocabulary (ids 1000-20999, seed 0)."""
    table = torch.randperm(20_000, generator=torch.Generator().manual_seed(0))[:64] + 1_000
    return Remapped(Induction(seq_len=16, min_length=3, max_length=6), table)


def ours(model: Any, task: Any, batch: PromptBatch) -> torch.Tensor:
    return ActivationPatching().measure(model, task, batch).values[0]


def transformer_lens(model: Any, task: Any, batch: PromptBatch) -> torch.Tensor:
    return tl_patched(model, task, batch)


def interleaved(fns: dict[str, Any], repeats: int, *args: Any) -> dict[str, tuple[list[float], torch.Tensor]]:
    """Seconds of each round and the result of each function, run in turn `repeats` rounds (load from other
    processes on shared cores falls on every side alike) after one untimed round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, torch.Tensor] = {}
    for attempt in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn(*args)
            if attempt:
                times[name].append(time.perf_counter() - start)
    return {name: (times[name], results[name]) for name in fns}


def case(label: str, model: Any, task: Any, n: int, repeats: int) -> dict[str, float]:
    """Median times and their ratio; also the median of the rounds' own ratios, which a slow drift of the
    machine's speed (a shared VM's neighbours) moves less than the ratio of medians."""
    model.eval()
    batch = task.batch(model, n=n, seed=0)
    measured = interleaved({"ours": ours, "tl": transformer_lens}, repeats, model, task, batch)
    (ours_times, ours_result), (tl_times, tl_result) = measured["ours"], measured["tl"]
    ours_s, tl_s = statistics.median(ours_times), statistics.median(tl_times)
    round_ratio = statistics.median(t / o for t, o in zip(tl_times, ours_times))
    diff = (ours_result - tl_result).abs().max().item()
    print(f"{label:<44} TL {tl_s:8.3f} s   ours {ours_s:8.3f} s   ratio {tl_s / ours_s:6.2f}x "
          f"(rounds' median {round_ratio:.2f}x)   max |diff| {diff:.2e}", flush=True)
    return {"tl_s": tl_s, "ours_s": ours_s, "ratio": tl_s / ours_s, "round_ratio": round_ratio,
            "max_abs_diff": diff}


def main(argv: Any = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="a,b,c")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    print(f"torch threads: {torch.get_num_threads()}")
    if "a" in args.cases:
        model = models.toy(n_layers=2, n_heads=8, d_model=64, d_vocab=64, n_ctx=32, seed=0)
        task = Induction(seq_len=16, min_length=3, max_length=6)
        results["a"] = case("(a) 2L x 8H toy, 8 prompts x 16 tokens", model, task, 8, args.repeats)
    if "b" in args.cases:
        model = models.toy(n_layers=4, n_heads=8, d_model=128, d_vocab=64, n_ctx=64, seed=0)
        task = Induction(seq_len=64, min_length=6, max_length=16)
        results["b"] = case("(b) 4L x 8H d128 toy, 16 prompts x 64 tokens", model, task, 16, args.repeats)
    if "c" in args.cases:
        model = models.bundled()
        task = smollm2_induction()
        results["c"] = case("(c) SmolLM2-135M (270 heads), 8 prompts x 16", model, task, 8, 1)
    return results


if __name__ == "__main__":
    main()
