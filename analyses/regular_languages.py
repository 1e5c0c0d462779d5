"""Akyürek et al. (2024), in-context learning of regular languages: n-gram predictors, n-gram heads, patching.

    python -m analyses.regular_languages [--quick] [--out DIR]

Trains (or reads from $CIRCUITS_CACHE) the task's model, then writes into DIR a table (table.md, printed) and
summary.json of: greedy DFA accuracy and total variation (TV) of the model's next-letter distribution to the
true DFA's and to the in-context 1..4-gram back-off predictors, the same for the predictors themselves; each
head's 2- and 3-gram head score against the uniform-attention baseline; the heads `circuits.discover` ranks top
(activation and path patching) and how many of them are among the highest n-gram-score heads. PNGs:

- attention.png: the attention of the top n-gram heads on one held-out sequence, matches outlined;
- head_scores.png: n-gram head scores per head with the uniform baseline;
- tv_vs_step.png: TV to the true DFA and to the n-gram predictors along training (recorded while training).

``--quick`` uses the task's quick variant (64-token contexts, a model trained in ~15 s): the pipeline, not
the paper's numbers. The default model trains for ~30-40 minutes on one thread on first use.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import circuits  # noqa: E402
from tasks.dfa import PAD, SEP  # noqa: E402
from tasks.ngram import match_mask  # noqa: E402
from tasks.regular_languages import ORDERS, RegularLanguages, attention_patterns  # noqa: E402
from analyses._script import figure_parser  # noqa: E402

ENGINES = ("activation_patching", "path_patching")
PROTOTYPE = {"accuracy": 0.80, "2gram_accuracy": 0.84, "3gram_accuracy": 0.95, "tv_dfa": 0.40, "tv_2gram": 0.27,
             "tv_1gram": 0.40, "2gram_head_scores": "0.58-0.84 (layer 1)", "2gram_baseline": 0.19}


def head_name(index: int, n_heads: int) -> str:
    return circuits.Head(index // n_heads, index % n_heads).name


def top_heads(scores: torch.Tensor, k: int) -> list[str]:
    return [head_name(i, scores.shape[1]) for i in scores.flatten().argsort(descending=True)[:k].tolist()]


def previous_token_mass(model: Any, data: Any) -> dict[str, float]:
    """Each head's mean attention on the position just before the query (a previous-token head: near 1)."""
    patterns = attention_patterns(model, data.tokens)
    queries = data.scored.clone()
    queries[:, 0] = False
    out = {}
    for layer, pattern in enumerate(patterns):
        previous = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)  # [batch, head, query - 1]: pattern[i, i-1]
        for head in range(pattern.shape[1]):
            out[circuits.Head(layer, head).name] = previous[:, head][queries[:, 1:]].mean().item()
    return out


def patching(model: Any, task: RegularLanguages, n: int, k: int, ngram_top: list[str]) -> dict[str, Any]:
    out = {}
    for engine in ENGINES:
        graph = circuits.discover(model, task, engine=engine, n=n, seed=0)
        ranked = [name for name, _ in graph.top(k, by="signed")]
        out[engine] = {"top": graph.top(k, by="signed"), "agree": len(set(ranked) & set(ngram_top)),
                       "metric_clean": graph.meta["metric_clean"], "metric_corrupted": graph.meta["metric_corrupted"],
                       "scores": graph.matrix().tolist()}
    return out


def plot_attention(model: Any, task: RegularLanguages, heads: list[str], order: int, path: Path) -> None:
    data = task.evaluation(n=1, seed=7)
    length = int((data.tokens[0] != PAD).sum())
    length = min(length, 48)  # a readable window
    tokens = data.tokens[:, :length]
    patterns = attention_patterns(model, data.tokens)
    mask = match_mask(tokens, order)[0]
    labels = ["|" if t == SEP else chr(97 + t) for t in tokens[0].tolist()]
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4.4), squeeze=False)
    for ax, name in zip(axes[0], heads):
        head = circuits.Head.parse(name)
        ax.imshow(patterns[head.layer][0, head.head, :length, :length].numpy(), cmap="Blues", vmin=0, vmax=1)
        ys, xs = mask.nonzero(as_tuple=True)
        ax.scatter(xs.numpy(), ys.numpy(), s=3, c="red", marker="s", alpha=0.5, label=f"{order}-gram matches")
        ax.set_xticks(range(length), labels, fontsize=4)
        ax.set_yticks(range(length), labels, fontsize=4)
        ax.set_title(name, fontsize=9)
    axes[0][0].legend(fontsize=6, loc="upper right")
    fig.suptitle(f"attention of the top {order}-gram heads (red: keys that follow the current {order - 1}-gram)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_head_scores(scores: dict[int, torch.Tensor], baselines: dict[int, float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3))
    first = next(iter(scores.values()))
    names = [head_name(i, first.shape[1]) for i in range(first.numel())]
    width = 0.8 / len(scores)
    for i, (order, s) in enumerate(scores.items()):
        x = torch.arange(len(names)) + i * width
        ax.bar(x.numpy(), s.flatten().numpy(), width=width, label=f"{order}-gram score", color=f"C{i}")
        ax.axhline(baselines[order], color=f"C{i}", ls=":", lw=1, label=f"uniform baseline ({baselines[order]:.2f})")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, fontsize=7)
    ax.set_ylabel("attention mass on matches")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_history(history: list[dict[str, Any]] | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if history:
        steps = [r["step"] for r in history]
        ax.plot(steps, [r["tv_dfa"] for r in history], "k-", label="true DFA")
        for order in ORDERS:
            ax.plot(steps, [r[f"tv_{order}gram"] for r in history], label=f"{order}-gram predictor")
        ax.set_xlabel("training step")
    else:
        ax.text(0.5, 0.5, "no training history (model trained elsewhere)", ha="center", transform=ax.transAxes)
    ax.set_ylabel("TV distance of the model to ...")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(summary: dict[str, Any]) -> str:
    m, p, proto = summary["model"], summary["predictors"], PROTOTYPE
    rows = [("quantity", "measured", "prototype (issue)"),
            ("greedy accuracy, model", f"{m['accuracy']:.3f}", f"{proto['accuracy']:.2f}")]
    rows += [(f"greedy accuracy, {o}-gram predictor", f"{p[f'{o}gram_accuracy']:.3f}",
              f"{proto.get(f'{o}gram_accuracy', '')}") for o in ORDERS]
    rows += [("TV model - true DFA", f"{m['tv_dfa']:.3f}", f"{proto['tv_dfa']:.2f}")]
    rows += [(f"TV model - {o}-gram predictor", f"{m[f'tv_{o}gram']:.3f}", f"{proto.get(f'tv_{o}gram', '')}")
             for o in ORDERS]
    rows += [(f"TV {o}-gram predictor - true DFA", f"{p[f'{o}gram_tv_dfa']:.3f}", "") for o in ORDERS]
    for order, scores in summary["head_scores"].items():
        flat = [f"{h}={v:.2f}" for h, v in sorted(scores["per_head"].items(), key=lambda kv: -kv[1])]
        rows.append((f"{order}-gram head scores (uniform {scores['baseline']:.2f})", " ".join(flat),
                     proto["2gram_head_scores"] + f", uniform {proto['2gram_baseline']}" if order == "2" else ""))
    previous = sorted(summary["previous_token_mass"].items(), key=lambda kv: -kv[1])
    rows.append(("previous-token attention", " ".join(f"{h}={v:.2f}" for h, v in previous),
                 "no sharp previous-token head in layer 0"))
    k = summary["k"]
    for engine, result in summary["patching"].items():
        top = " ".join(f"{h}={s:.2f}" for h, s in result["top"])
        rows.append((f"{engine} top-{k}", top, ""))
        rows.append((f"{engine} top-{k} among top-{k} n-gram heads", f"{result['agree']}/{k} (chance "
                     f"{k * k / summary['n_heads_total']:.2f})", ""))
    history = summary["history"] or [{}]
    trained = summary["training_seconds"] or history[-1].get("seconds")
    rows.append(("training steps / seconds", f"{summary['steps']} / " + (f"{trained:.0f}" if trained else "cached"),
                 "4391 / 900"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def run(quick: bool = False, out: Path = Path("out/regular_languages"), k: int = 3) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    task = RegularLanguages.quick() if quick else RegularLanguages()
    start = time.perf_counter()
    model = task.model(progress=not quick)
    seconds = time.perf_counter() - start
    history = task.history()
    data = task.evaluation(n=64 if quick else 512, seed=2024)
    scores, baselines = {}, {}
    for order in (2, 3):
        scores[order], baselines[order] = task.head_scores(model, order, data)
    best = torch.maximum(scores[2] - baselines[2], scores[3] - baselines[3])  # excess over uniform, either order
    ngram_top = top_heads(best, k)
    n_heads = model.cfg.n_heads
    summary = {
        "quick": quick, "k": k, "n_heads_total": model.cfg.n_layers * n_heads, "steps": task.recipe.steps,
        "recipe": str(task.recipe),
        "training_seconds": seconds if seconds > 5 else None,  # None: read from the cache
        "evaluation_sequences": int(data.tokens.shape[0]),
        "model": task.measure(model, data), "predictors": task.predictor_measures(data),
        "head_scores": {str(o): {"baseline": baselines[o],
                                 "per_head": {head_name(i, n_heads): v
                                              for i, v in enumerate(scores[o].flatten().tolist())}}
                        for o in scores},
        "ngram_top": ngram_top, "previous_token_mass": previous_token_mass(model, data),
        "patching": patching(model, task, n=16 if quick else 128, k=k, ngram_top=ngram_top),
        "history": history,
    }
    plot_attention(model, task, ngram_top[:3], 2, out / "attention.png")
    plot_head_scores(scores, baselines, out / "head_scores.png")
    plot_history(history, out / "tv_vs_step.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = table(summary)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = figure_parser(__doc__, "out/regular_languages", "the quick variant: checks the pipeline in seconds")
    parser.add_argument("--k", type=int, default=3, help="how many top heads to compare (default 3)")
    args = parser.parse_args(argv)
    run(quick=args.quick, out=args.out, k=args.k)


if __name__ == "__main__":
    main()
