"""Context against memory on the bundled SmolLM2 (Yu, Merullo & Pavlick 2023; Jin et al. 2024, PH3).

    python -m analyses.capitals [--quick] [--out DIR]

The `capitals` task's counterfactual prompts ("Context: The capital of France is Berlin. Q: ... A: The capital
of France is"). Countries the model knows are split in two: heads are found on one half, every intervention is
measured on prompts about the other half (held out). Writes into DIR:

- heads.png: per-head direct logit attribution (in-context minus memorised capital, through the final RMSNorm
  scale) and the path-patching scores of each head -> logits (`circuits.discover`, denoising);
- scaling.png: in-context answer rate when one head's output (its ``hook_z``) is multiplied by alpha, at every
  position and at the read-out position only, for the top in-context head, the top memory head, the top three
  in-context heads together and single random heads;
- pruning.png: PH3-style pruning (alpha = 0) of the top-k memory heads or context heads (ranked by path patching,
  and by attribution) against as many random heads (several draws): in-context and memorised answer rates;
- summary.json: every number above with prompt counts and standard errors, next to the issue's prototype.

Rates count a prompt as "in-context" when the top-1 token is the city the context names and "memorised" when it
is the true capital; the standard error is sqrt(p(1-p)/n) over n held-out prompts.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import circuits  # noqa: E402
from analyses import _readout  # noqa: E402
from tasks.capitals import CONTEXT_TEMPLATES, Capitals  # noqa: E402
from analyses._script import at_most_two_threads, figure_parser  # noqa: E402

ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
MODES = {"all_positions": False, "readout_only": True}
PROTOTYPE = {"prompts": 120, "in_context_rate": 0.375, "memorised_rate": 0.558, "context_heads": ["L23H2", "L23H1", "L23H7"],
             "memory_heads": ["L23H4", "L24H4"], "top_head_scaling_in_context": [0.23, 0.70],
             "top3_alpha8_in_context": 0.91, "ablate_L23H4_in_context": 0.86, "ablate_top5_memory_in_context": 0.95,
             "ablate_top5_context_in_context": 0.025, "ablate_5_random_in_context": 0.24, "baseline_ablation_set": 0.31}
PAPERS = {"yu_2023_one_head_in_context_pythia": 0.88, "ph3_context_gain": 0.44, "ph3_memory_gain": 0.385}


@dataclass(frozen=True)
class Settings:
    n_find: int = 48  # prompts for the attribution
    n_paths: int = 6  # prompts for path patching (the slow step)
    senders_from: int = 0  # path patching senders: heads of this layer and later
    n_eval: int = 64  # held-out prompts for every intervention (each costs a forward pass per condition)
    draws: int = 4  # random-head draws per condition
    ks: tuple[int, ...] = (1, 3, 5)  # pruning sizes
    alphas: tuple[float, ...] = ALPHAS


# The pipeline in well under a minute on two cores (after the model is loaded), not the figures' numbers.
QUICK = Settings(n_find=8, n_paths=2, senders_from=26, n_eval=12, draws=1, ks=(1,), alphas=(0.0, 1.0, 8.0))


def split(subjects: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Known countries, alphabetically, alternately into a head-finding half and a held-out half."""
    ordered = sorted(subjects)
    return tuple(ordered[0::2]), tuple(ordered[1::2])


def ranked(scores: torch.Tensor, k: int, largest: bool) -> list[tuple[int, int]]:
    """The k heads with the largest (or smallest) finite scores, as (layer, head)."""
    flat = scores.flatten().nan_to_num(nan=-float("inf") if largest else float("inf"))
    order = flat.argsort(descending=largest)[:k].tolist()
    return [divmod(i, scores.shape[1]) for i in order]


def every_head(model: Any) -> list[circuits.Head]:
    return [circuits.Head(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def name(heads: list[tuple[int, int]]) -> list[str]:
    return [circuits.Head(l, h).name for l, h in heads]


def rates(top1: torch.Tensor, batch: circuits.PromptBatch) -> dict[str, float]:
    context, context_se = _readout.rate(top1 == batch.answer)
    memory, memory_se = _readout.rate(top1 == batch.foil)
    return {"in_context": context, "in_context_se": context_se, "memorised": memory, "memorised_se": memory_se,
            "n": int(top1.numel())}


def run(quick: bool = False, out: Path = Path("out/capitals"), model: Any = None,
        settings: Optional[Settings] = None) -> dict[str, Any]:
    start = time.perf_counter()
    settings = settings or (QUICK if quick else Settings())
    model = model if model is not None else circuits.models.bundled()
    out.mkdir(parents=True, exist_ok=True)
    task = Capitals(templates=CONTEXT_TEMPLATES[:1])  # the prototype's prompt, so the rates compare
    known = task.known(model)
    find, held = split(known.subjects)
    # `replace` keeps the task's filter result (its `_known` cache): the filter runs once.
    find_task, eval_task = replace(task, subjects=find), replace(task, subjects=held)

    # Heads, found on the first half: attribution and path patching to the logits.
    batch = find_task.batch(model, settings.n_find, seed=0)
    readout = _readout.read_out(model, batch.clean, batch.position)
    along = _readout.directions(model, batch.answer) - _readout.directions(model, batch.foil)
    attribution = _readout.direct(readout.heads, readout.scale, along).mean(-1)  # [layer, head]
    senders = tuple(h.name for h in every_head(model) if h.layer >= settings.senders_from)
    graph = circuits.discover(model, find_task, engine="path_patching", n=settings.n_paths, seed=0,
                              receivers=("logits",), senders=senders)
    paths = graph.matrix()
    k_max = max(*settings.ks, 3)  # the top three in-context heads are scaled together
    heads = {"dla": {"context": ranked(attribution, k_max, True), "memory": ranked(attribution, k_max, False)},
             "path_patching": {"context": ranked(paths, k_max, True), "memory": ranked(paths, k_max, False)}}

    # Interventions on held-out prompts.
    eval_batch = eval_task.batch(model, settings.n_eval, seed=1)
    cached = _readout.read_out(model, eval_batch.clean, eval_batch.position, keep_resid=True)
    with torch.no_grad():
        top1 = circuits.forward.logits(model, eval_batch.clean, eval_batch.position).argmax(-1).cpu()
    baseline = rates(top1, eval_batch)
    rng = random.Random(0)
    chosen = {h for source in heads.values() for group in source.values() for h in group}
    pool = [(h.layer, h.head) for h in every_head(model) if (h.layer, h.head) not in chosen]
    scaling = head_scaling(model, cached, eval_batch, heads["dla"], [[p] for p in rng.sample(pool, settings.draws)],
                           settings.alphas, top1)
    pruning = head_pruning(model, cached, eval_batch, heads, settings, pool, rng)

    summary = {
        "quick": quick, "settings": asdict(settings), "known": known.report, "n_known": len(known.subjects),
        "find_countries": list(find), "held_out_countries": list(held), "baseline": baseline,
        "attribution_top": {kind: [(n, round(float(attribution[l, h]), 3)) for n, (l, h) in zip(name(hs), hs)]
                            for kind, hs in heads["dla"].items()},
        "path_patching_top": {kind: [(n, round(float(paths[l, h]), 3)) for n, (l, h) in zip(name(hs), hs)]
                              for kind, hs in heads["path_patching"].items()},
        "path_patching_meta": {k: graph.meta[k] for k in ("n", "metric_clean", "metric_corrupted")},
        "scaling": scaling, "pruning": pruning,
        "top_context_head_monotonic": {mode: monotonic(scaling[mode]["top context head"]) for mode in MODES},
        "prototype": PROTOTYPE, "papers": PAPERS, "seconds": None,
    }
    draw_heads(attribution, paths, out / "heads.png")
    draw_scaling(scaling, baseline, out / "scaling.png")
    draw_pruning(pruning, baseline, out / "pruning.png")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    report(summary)
    return summary


def head_scaling(model: Any, cached: _readout.ReadOut, batch: circuits.PromptBatch, dla: dict[str, list],
                 random_heads: list[list[tuple[int, int]]], alphas: tuple[float, ...],
                 unscaled: torch.Tensor) -> dict[str, Any]:
    """In-context/memorised rates for each head set scaled by each alpha, per mode (alpha = 1 is the
    unscaled run, `unscaled` top-1 tokens, not run again)."""
    sets = {"top context head": dla["context"][:1], "top memory head": dla["memory"][:1],
            "top 3 context heads": dla["context"][:3]}
    sets.update({f"random {name(hs)[0]}": hs for hs in random_heads})
    scaled = [a for a in alphas if a != 1.0]
    conditions = [{h: alpha for h in hs} for hs in sets.values() for alpha in scaled]
    result: dict[str, Any] = {}
    for mode, readout_only in MODES.items():
        top1 = iter(_readout.scaled_top1(model, cached, batch.position, conditions, readout_only))
        result[mode] = {label: {"heads": name(hs), "alpha": list(alphas),
                                "rates": [rates(unscaled if a == 1.0 else next(top1), batch) for a in alphas]}
                        for label, hs in sets.items()}
    return result


def head_pruning(model: Any, cached: _readout.ReadOut, batch: circuits.PromptBatch, heads: dict[str, dict[str, list]],
                 settings: Settings, pool: list[tuple[int, int]], rng: random.Random) -> dict[str, Any]:
    """Rates with the top-k memory or context heads (per ranking) or k random heads zeroed, per mode."""
    sets: dict[str, list[tuple[int, int]]] = {}
    for source, groups in heads.items():
        for kind, ranked_heads in groups.items():
            for k in settings.ks:
                sets[f"{source} top-{k} {kind}"] = ranked_heads[:k]
    for k in settings.ks:
        for d in range(settings.draws):
            sets[f"random-{k} draw {d}"] = rng.sample(pool, k)
    conditions = [{h: 0.0 for h in hs} for hs in sets.values()]
    result: dict[str, Any] = {}
    for mode, readout_only in MODES.items():
        top1 = _readout.scaled_top1(model, cached, batch.position, conditions, readout_only)
        rows = {label: {"heads": name(hs), **rates(top1[i], batch)} for i, (label, hs) in enumerate(sets.items())}
        for k in settings.ks:  # the random draws summarised: mean and spread over draws
            draws = [rows[f"random-{k} draw {d}"] for d in range(settings.draws)]
            rows[f"random-{k} mean"] = {m: sum(r[m] for r in draws) / len(draws) for m in ("in_context", "memorised")}
            rows[f"random-{k} mean"]["range_in_context"] = [min(r["in_context"] for r in draws),
                                                            max(r["in_context"] for r in draws)]
        result[mode] = rows
    return result


def monotonic(curve: dict[str, Any]) -> bool:
    values = [r["in_context"] for r in curve["rates"]]
    return all(b >= a for a, b in zip(values, values[1:]))


# --- figures and the printed table ----------------------------------------------------------------------
def draw_heads(attribution: torch.Tensor, paths: torch.Tensor, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 7))
    for ax, values, title in ((axes[0], attribution, "direct attribution: in-context − memorised (logits)"),
                              (axes[1], paths, "path patching head → logits (denoising, normalised)")):
        bound = float(values.nan_to_num().abs().max()) or 1.0
        image = ax.imshow(values.numpy(), cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        ax.set(xlabel="head", ylabel="layer", title=title)
        ax.title.set_fontsize(9)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_scaling(scaling: dict[str, Any], baseline: dict[str, float], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = {"top context head": "#d95f02", "top memory head": "#1b9e77", "top 3 context heads": "#7570b3"}
    for ax, (mode, curves) in zip(axes, scaling.items()):
        for label, curve in curves.items():
            y = [r["in_context"] for r in curve["rates"]]
            err = [r["in_context_se"] for r in curve["rates"]]
            colour = colours.get(label, "#aaaaaa")
            tag = f"{label} ({', '.join(curve['heads'])})" if label in colours else None
            ax.errorbar(range(len(y)), y, yerr=err, color=colour, marker="o", ms=3, label=tag, capsize=2)
        ax.axhline(baseline["in_context"], color="black", lw=0.8, ls=":")
        alphas = next(iter(curves.values()))["alpha"]
        ax.set_xticks(range(len(alphas)), [str(a) for a in alphas])
        ax.set(xlabel="alpha (head output multiplied by)", title=f"scaled at {mode.replace('_', ' ')}", ylim=(0, 1))
        ax.title.set_fontsize(9)
    axes[0].set_ylabel(f"in-context answer rate (n={baseline['n']}; grey: random heads)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_pruning(pruning: dict[str, Any], baseline: dict[str, float], path: Path) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    for ax, (mode, rows) in zip(axes, pruning.items()):
        labels = [label for label in rows if "draw" not in label]
        x = range(len(labels))
        for offset, metric, colour in ((-0.2, "in_context", "#d95f02"), (0.2, "memorised", "#1b9e77")):
            ax.bar([i + offset for i in x], [rows[label][metric] for label in labels], width=0.4, color=colour,
                   yerr=[rows[label].get(f"{metric}_se", 0) for label in labels], label=metric, capsize=2)
            ax.axhline(baseline[metric], color=colour, lw=0.8, ls=":")
        ax.set(ylabel="rate", title=f"heads zeroed at {mode.replace('_', ' ')} (dotted: no pruning)", ylim=(0, 1))
        ax.title.set_fontsize(9)
        ax.set_xticks(list(x), labels, rotation=35, ha="right", fontsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(summary: dict[str, Any]) -> None:
    b = summary["baseline"]
    print(f"{summary['known']}; heads found on {len(summary['find_countries'])} countries, "
          f"measured on {b['n']} prompts about {len(summary['held_out_countries'])} others")
    print(f"baseline: in-context {b['in_context']:.3f} ± {b['in_context_se']:.3f}, memorised {b['memorised']:.3f} "
          f"± {b['memorised_se']:.3f} (prototype 0.375 / 0.558, n=120)")
    print("attribution:", summary["attribution_top"])
    print("path patching:", summary["path_patching_top"])
    for mode, curves in summary["scaling"].items():
        for label, curve in curves.items():
            print(f"  scaling {mode:14s} {label:28s} {curve['heads']}: "
                  + " ".join(f"{r['in_context']:.2f}" for r in curve["rates"]))
    for mode, rows in summary["pruning"].items():
        for label, row in rows.items():
            if "draw" not in label:
                print(f"  pruning {mode:14s} {label:30s} in-context {row['in_context']:.3f} memorised {row['memorised']:.3f}")
    print(f"{summary['seconds']} s")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = figure_parser(__doc__, "out/capitals", "fewer prompts, alphas and draws; path patching from layer 26 on")
    args = parser.parse_args(argv)
    at_most_two_threads()
    return run(quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
