"""Edge attribution per position vs plain: the time of `EdgeAttribution(positions=...)` (measuring and building the
graph) against the plain run's on the same model and prompts, and the largest difference between the plain scores and the positional ones summed.
`python -m benchmarks.positional [--model smollm2|toy] [--n 8] [--seq-len 16] [--repeats 3] [--method eap]`

  smollm2  the bundled SmolLM2-135M (30 layers x 9 heads, MLPs), random tokens
  toy      a 4-layer x 8-head d_model-128 toy with MLPs, random tokens
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Sequence
from typing import Any, Optional

import torch

from circuits import models
from circuits.engines.base import prompts, session
from circuits.engines.edge_attribution import EdgeAttribution
from tests.references import RandomTokens


@dataclasses.dataclass(frozen=True)
class ThreeSpans(RandomTokens):
    """Random tokens with three spans that differ from prompt to prompt ("a", "b", "end") and "other"."""

    name: str = "three_spans"

    def batch(self, model: Any, n: int, seed: int) -> Any:
        batch = super().batch(model, n, seed)
        spans = torch.randint(4, (n, self.seq_len), generator=torch.Generator().manual_seed(seed))
        spans[spans == 2] = 3
        spans[:, -1] = 2
        return dataclasses.replace(batch, spans=spans, span_names=("a", "b", "end", "other"))


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=("smollm2", "toy"))
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="eap")
    args = parser.parse_args(argv)
    model = (models.bundled() if args.model == "smollm2" else
             models.toy(n_layers=4, n_heads=8, d_model=128, d_vocab=256, n_ctx=64, seed=0, attn_only=False))
    task = ThreeSpans(seq_len=args.seq_len)
    with session(model):
        batch = prompts(model, task, args.n, 0)
    times: dict[str, list[float]] = {}
    values: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):  # interleaved, so that load on the machine hits every kind alike
        for kind in (None, "tokens", "spans"):
            engine = EdgeAttribution(method=args.method, positions=kind, progress=False)
            start = time.perf_counter()
            measurement = engine.measure(model, task, batch)
            engine.graph(model, measurement)  # the graph too: positional edges carry a dict of scores each
            times.setdefault(str(kind), []).append(time.perf_counter() - start)
            values[str(kind)] = measurement.values
    median = {kind: statistics.median(t) for kind, t in times.items()}
    plain = values["None"]
    result = {"model": args.model, "n": args.n, "seq_len": args.seq_len, "method": args.method,
              "seconds": median, "ratio_tokens": median["tokens"] / median["None"],
              "ratio_spans": median["spans"] / median["None"],
              "max_sum_difference": max(float((values[k].sum(-1) - plain).abs().max()) for k in ("tokens", "spans")),
              "max_plain": float(plain.abs().max())}
    for key, value in result.items():
        print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    main()
