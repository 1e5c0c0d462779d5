"""When does the induction circuit form, and what moves it? (Singh et al. 2024, Fig. 5b analogue)

    python -m analyses.induction_formation [--quick] [--out DIR]

Trains the same initial model several times on the same batches, once without a clamp and once with each
clamp held throughout training (`circuits.clamps`): a layer-0 head's pattern fixed to the previous token, the
layers below layer 1 replaced by a perfect previous-token copier (`Layer0`), a layer-1 head's pattern fixed on
the induction target (`Match`) or its output made a perfect copier (`Copy`), and ablations of the head that
becomes the previous-token head in the unclamped run (and of all of layer 0). Per seed, the threshold is half
the plateau loss (the task's ``plateau_loss``, log 2 for few-shot; else the unclamped run's held-out loss at
10% of training, as in the engine). Writes into DIR, per setting:

- ``{setting}_loss.png``: held-out loss against step per clamp, the mean over seeds with a min-max band;
- ``summary.json`` and ``summary.md``: the first evaluated step whose held-out loss is below the threshold,
  per clamp and seed (null: never), final losses, the previous-token head of each unclamped run, and for the
  unclamped model the layer-1 induction strengths and the additivity check (accuracy with only the strongest
  layer-1 head kept, the others ablated after training).

``--quick`` runs the token-induction setting only, on a smaller config (sequences of 32 with 10-16 token
segments, batch 32, 360 steps, 2 seeds) in about a minute; the full run adds the few-shot setting.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from circuits import clamped_runs, clamps, models, training  # noqa: E402
from tasks.few_shot import FewShot  # noqa: E402
from tasks.few_shot import model_config as few_shot_model  # noqa: E402
from tasks.induction import Induction  # noqa: E402
from analyses._script import figure_parser  # noqa: E402

NO_CLAMP = "no clamp"
ABLATE_PREVIOUS = "ablate previous-token head"


@dataclass(frozen=True)
class Setting:
    name: str
    task: Any
    model: Callable[[int], models.ToyConfig]  # seed -> initial model config
    steps: int
    eval_every: int
    held_out: int
    clamps: dict[str, tuple] = field(default_factory=dict)  # clamp name -> clamps (besides no clamp, ablations)
    ablate_layer0: bool = False


def induction_setting(quick: bool) -> Setting:
    task = Induction(seq_len=32, min_length=10, max_length=16, train_batch=32)
    base = dataclasses.replace(task.model_config, n_ctx=32)
    named = {"previous token L0H0": (clamps.PreviousToken("L0H0"),), "layer 0 (Layer0)": (clamps.Layer0(),)}
    if not quick:
        named |= {"match L1H0": (clamps.Match("L1H0"),), "copy L1H0": (clamps.Copy("L1H0"),)}
    return Setting("induction", task, lambda seed: dataclasses.replace(base, seed=seed),
                   steps=360 if quick else 600, eval_every=20 if quick else 10, held_out=192 if quick else 256,
                   clamps=named,
                   ablate_layer0=True)


def few_shot_setting() -> Setting:
    named = {"previous token L0H0": (clamps.PreviousToken("L0H0"),), "layer 0 (Layer0)": (clamps.Layer0(),),
             "match L1H0": (clamps.Match("L1H0"),)}
    return Setting("few_shot", FewShot(), few_shot_model, steps=2500, eval_every=50, held_out=512, clamps=named)


# --- measures on a trained plain module --------------------------------------------------------------------
def patterns(module: Any, layer: int, inputs: torch.Tensor) -> torch.Tensor:
    """``[batch, head, query, key]`` attention patterns of `layer` on `inputs`."""
    captured = []
    handle = models.native_attention(module)[layer].register_forward_hook(
        lambda _m, _a, output: captured.append(output[1].detach()))
    try:
        with torch.no_grad():
            training.outputs(module, inputs)
    finally:
        handle.remove()
    return captured[-1]


def previous_token_scores(module: Any, inputs: torch.Tensor) -> torch.Tensor:
    """``[n_heads]``: layer-0 attention to the previous position, averaged over positions 1.."""
    pattern = patterns(module, 0, inputs)
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))


def token_induction_scores(module: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_heads]``: layer-1 attention on the tokens after earlier occurrences of the current token (the
    `Match` clamp's target), averaged over positions whose token occurred before."""
    fixed, keep = clamps.Match("L1H0").rows(clamps.ClampState(inputs=tokens), tokens.shape[1], tokens.device)
    pattern = patterns(module, 1, tokens)
    on_target = (pattern * (fixed > 0)[:, None]).sum(-1)  # [batch, head, query]
    return (on_target * keep[:, None]).sum(dim=(0, 2)) / keep.sum()


def accuracy(module: Any, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        predictions = training.outputs(module, inputs).argmax(-1)
    mask = targets != -100
    return (predictions[mask] == targets[mask]).float().mean().item()


def additivity(module: Any, strengths: torch.Tensor, held_out: tuple) -> dict[str, Any]:
    """Accuracy of the trained model, with only the strongest layer-1 head kept, and without it."""
    n_heads = strengths.shape[0]
    strongest = int(strengths.argmax())
    others = tuple(clamps.Ablate(f"L1H{h}") for h in range(n_heads) if h != strongest)
    result = {"strongest_head": f"L1H{strongest}", "accuracy": accuracy(module, *held_out)}
    with clamps.attached(module, others):
        result["accuracy_strongest_only"] = accuracy(module, *held_out)
    with clamps.attached(module, (clamps.Ablate(f"L1H{strongest}"),)):
        result["accuracy_without_strongest"] = accuracy(module, *held_out)
    return result


# --- runs -------------------------------------------------------------------------------------------------
def run_setting(setting: Setting, seeds: Sequence[int], progress: bool = True) -> dict[str, Any]:
    """Every clamp for every seed; the curves, crossing steps and the unclamped model's measures."""
    objective = clamped_runs.Objective.of(setting.task, None)
    out: dict[str, Any] = {"steps": None, "curves": {}, "crossing": {}, "final_loss": {}, "threshold": {},
                           "previous_token_head": {}, "induction_strengths": {}, "additivity": {}}
    for seed in seeds:
        initial = models.new_native(setting.model(seed))
        held_out = objective.held_out(setting.held_out, seed)
        settings = clamped_runs.Settings.for_task(setting.task, setting.steps, setting.eval_every, seed)
        train = lambda named, keep=False: clamped_runs.train_clamped(  # noqa: E731
            initial, objective, named, settings, held_out, keep_module=keep, progress=progress,
            description=f"{setting.name} seed {seed}")
        baseline = train((), keep=True)
        threshold = 0.5 * clamped_runs.plateau_loss(setting.task, baseline, setting.steps)
        previous = int(previous_token_scores(baseline.module, held_out[0]).argmax())
        runs = {NO_CLAMP: baseline, **{name: train(named) for name, named in setting.clamps.items()}}
        runs[ABLATE_PREVIOUS] = train((clamps.Ablate(f"L0H{previous}"),))
        if setting.ablate_layer0:
            runs["ablate layer 0"] = train(tuple(clamps.Ablate(f"L0H{h}") for h in range(initial.cfg.n_heads)))
        strengths = (setting.task.induction_strength(baseline.module) if isinstance(setting.task, FewShot)
                     else token_induction_scores(baseline.module, held_out[0]))
        out["steps"] = baseline.steps
        out["threshold"][seed] = threshold
        out["previous_token_head"][seed] = f"L0H{previous}"
        out["induction_strengths"][seed] = [round(float(v), 4) for v in strengths]
        out["additivity"][seed] = additivity(baseline.module, strengths, held_out)
        for name, run in runs.items():
            out["curves"].setdefault(name, {})[seed] = run.loss
            out["crossing"].setdefault(name, {})[seed] = run.crossing(threshold)
            out["final_loss"].setdefault(name, {})[seed] = run.final_loss
    return out


# --- outputs ----------------------------------------------------------------------------------------------
def draw(name: str, result: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    steps = np.array(result["steps"])
    for clamp, by_seed in result["curves"].items():
        curves = np.array(list(by_seed.values()))
        line, = ax.plot(steps, curves.mean(0), label=clamp, lw=1.5)
        ax.fill_between(steps, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2, lw=0)
    ax.axhline(float(np.mean(list(result["threshold"].values()))), color="k", ls="--", lw=0.8,
               label="half the plateau")
    ax.set(xlabel="training step", ylabel="held-out loss", title=f"{name}: clamped throughout training "
           f"({len(result['threshold'])} seeds, band = min..max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, result in results.items():
        seeds = list(result["threshold"])
        lines += [f"### {name}", "", "| clamp | " + " | ".join(f"seed {s}" for s in seeds) + " | final loss (mean) |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for clamp, crossing in result["crossing"].items():
            cells = [str(crossing[s]) if crossing[s] is not None else "never" for s in seeds]
            final = np.mean(list(result["final_loss"][clamp].values()))
            lines.append(f"| {clamp} | " + " | ".join(cells) + f" | {final:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = figure_parser(__doc__, "out/induction_formation", "token induction only, smaller config, 2 seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 (quick), 0 1 2")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    settings = [induction_setting(args.quick)] + ([] if args.quick else [few_shot_setting()])
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for setting in settings:
        start = time.perf_counter()
        results[setting.name] = run_setting(setting, seeds, progress=not args.quick)
        results[setting.name]["seconds"] = round(time.perf_counter() - start, 1)
        draw(setting.name, results[setting.name], args.out / f"{setting.name}_loss.png")
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))
    (args.out / "summary.md").write_text(table(results))
    print(table(results))
    for name, r in results.items():
        print(f"{name}: previous-token heads {r['previous_token_head']}; layer-1 induction strengths "
              f"{r['induction_strengths']}; additivity {r['additivity']}; {r['seconds']} s")
    return results


if __name__ == "__main__":
    main()
