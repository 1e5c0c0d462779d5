"""Cost of a clamped training step: clamps on the plain native module vs unclamped, and vs the bridge.

    python -m benchmarks.clamped_training [--steps 20] [--rounds 5]

One training step (forward, backward, AdamW update), in two cases: the default induction model (2 layers x 4
heads, d_model 64, batch 64 x 48 tokens; compute dominates) and the few-shot model (2 layers x 8 heads, float
inputs, batch 128 x 5 positions; per-call overhead dominates), timed for:

- the plain native module (`models.native_copy`), unclamped and with each clamp of `circuits.clamps`
  (torch hooks on its submodules: what `clamped_training` and the analysis train);
- the TransformerBridge, unclamped and with the same previous-token clamp written as a TransformerLens
  ``hook_pattern`` hook (what `circuits.training.train(hooks=...)` would run).

Configurations are interleaved round by round (shared cores drift); each figure is the median over rounds
of the mean step time over `--steps` steps, in CPU time of this process (one thread: on shared cores wall
time mostly measures the other processes). Prints the times and each ratio to the unclamped native step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, Optional

import torch
import torch.nn.functional as F

from circuits import clamps, hooks, models, training
from tasks.few_shot import FewShot
from tasks.few_shot import model_config as few_shot_model
from tasks.induction import Induction


def step_timer(model: Any, context: Callable[[], Any], inputs: torch.Tensor,
               targets: torch.Tensor) -> Callable[[int], float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def run(steps: int) -> float:
        model.train()
        with context():
            start = time.process_time()
            for _ in range(steps):
                logits = training.outputs(model, inputs)
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return (time.process_time() - start) / steps

    return run


def previous_token_hook(n_pos: int) -> Callable:
    fixed = torch.diag(torch.ones(n_pos - 1), -1)
    fixed[0, 0] = 1.0

    def hook(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
        pattern = pattern.clone()
        pattern[:, 0] = fixed
        return pattern

    return hook


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default="induction,few_shot")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for case in args.cases.split(","):
        if case == "induction":
            task = Induction()
            inputs, targets = task.training_sample_for(task.train_batch, 0)
            bridge = models.toy(task.model_config)
        else:
            inputs, targets = FewShot().training_sample(torch.Generator().manual_seed(0))
            bridge = models.toy(few_shot_model())
        print(f"\n{case}: inputs {tuple(inputs.shape)}")
        results[case] = compare(bridge, inputs, targets, args.steps, args.rounds)
    return results


def compare(bridge: Any, inputs: torch.Tensor, targets: torch.Tensor, steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each configuration, over `rounds` interleaved rounds of `steps` steps."""
    native = models.native_copy(bridge)
    native_clamps = {
        "Ablate L1H0": [clamps.Ablate("L1H0")], "Ablate L1H0 (mean)": [clamps.Ablate("L1H0", "mean")],
        "PreviousToken L0H0": [clamps.PreviousToken("L0H0")], "Match L1H0": [clamps.Match("L1H0")],
        "Copy L1H0": [clamps.Copy("L1H0")], "Layer0": [clamps.Layer0()],
        "PreviousToken L0H0 + Match L1H0 + Ablate L1H1": [clamps.PreviousToken("L0H0"), clamps.Match("L1H0"),
                                                           clamps.Ablate("L1H1")]}
    timers = {"native, unclamped": step_timer(native, nullcontext, inputs, targets)}
    for name, clamp_list in native_clamps.items():
        timers[f"native, {name}"] = step_timer(native, lambda c=clamp_list: clamps.attached(native, c), inputs, targets)
    pattern_hook = [(hooks.site(bridge, 0, "pattern"), previous_token_hook(inputs.shape[1]))]
    timers["bridge, unclamped"] = step_timer(bridge, nullcontext, inputs, targets)
    timers["bridge, PreviousToken L0H0 (hook_pattern)"] = step_timer(
        bridge, lambda: hooks.attached(bridge, pattern_hook), inputs, targets)
    for run in timers.values():
        run(3)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, run in timers.items():
            times[name].append(run(steps))
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["native, unclamped"]
    print(f"{'configuration':<52} {'ms/step':>8} {'vs native unclamped':>20}")
    for name, median in medians.items():
        print(f"{name:<52} {1000 * median:8.1f} {median / base:19.2f}x")
    return medians


if __name__ == "__main__":
    main()
