"""He et al. (2025), in-context linear regression: patterns, loss vs heads, patching.

    python -m analyses.icl_regression [--quick] [--out DIR]

Reads the shipped one-layer softmax-attention models with 1, 2 and 4 heads (else trains and caches them), then writes
one PNG per figure into DIR and prints a table of the issue's numbers next to the paper's:

- kq.png: each head's effective score matrix W_KQ = W_Q W_Kᵀ / √d_head (x-block ≈ ω_h I);
- ov.png: each head's OV read-out vector W_V W_O W_U (≈ (0, ..., 0, μ_h));
- omega_mu.png: (ω_h, μ_h) of every head of the 2- and 4-head models, with the paper's ωμ = 0.45 curves;
- loss_vs_heads.png: validation MSE for 1/2/4 heads next to one-step GD, debiased GD and ridge;
- patching.png: per-head scores of the 2-head model from `circuits.discover` (activation patching, and path
  patching when that engine is registered).

``--quick`` trains for a few hundred steps (the pipeline, not the paper's numbers) and patches fewer prompts.
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
from tasks.icl_regression import ICLRegression  # noqa: E402
from tasks import icl_regression_estimators as estimators  # noqa: E402
from analyses._script import figure_parser  # noqa: E402

PAPER = {"mse_1": 0.40, "mse_2": 0.24, "omega": 0.13, "mu": 3.45, "omega_mu": 0.45}
HEADS = (1, 2, 4)
QUICK_SCHEDULE = ((3e-3, 300),)


def train_models(task: ICLRegression, progress: bool = False) -> tuple[dict[int, Any], dict[int, float]]:
    """The 1/2/4-head models and the seconds each took (≈ 0 when read from the cache)."""
    trained, seconds = {}, {}
    for heads in HEADS:
        start = time.perf_counter()
        trained[heads] = task.model(heads, progress=progress)
        seconds[heads] = time.perf_counter() - start
    return trained, seconds


def estimator_losses(task: ICLRegression, n: int, seed: int) -> dict[str, float]:
    s = task.sample(n, torch.Generator().manual_seed(seed))
    d, L, noise = task.d, task.L, task.noise
    predictions = {
        "one-step GD": estimators.gd(s.x, s.y, s.x_q, estimators.gd_step_size(d, L, noise)),
        "debiased GD": estimators.debiased_gd(s.x, s.y, s.x_q, estimators.debiased_gd_step_size(d, L, noise)),
        "ridge": estimators.ridge(s.x, s.y, s.x_q, d * noise),
    }
    return {name: ((p - s.y_q) ** 2).mean().item() for name, p in predictions.items()}


def plot_kq(patterns: dict[int, estimators.HeadPatterns], path: Path) -> None:
    rows = [(h, i) for h in patterns for i in range(len(patterns[h].kq))]
    fig, axes = plt.subplots(1, len(rows), figsize=(2.4 * len(rows), 2.8), squeeze=False)
    for ax, (h, i) in zip(axes[0], rows):
        kq = patterns[h].kq[i]
        bound = kq[:-1].abs().max().item() or 1.0  # the query's y row is untrained: left out of the colour scale
        ax.imshow(kq.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.axhline(kq.shape[0] - 1.5, color="k", lw=0.5)
        ax.set_title(f"{h} heads: H{i}\nω={patterns[h].omega[i]:.3f}", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0][0].set_ylabel("query coordinate (last: y)")
    fig.suptitle("W_KQ = W_Q W_Kᵀ / √d_head (x-block ≈ ω_h I)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ov(patterns: dict[int, estimators.HeadPatterns], path: Path) -> None:
    fig, axes = plt.subplots(1, len(patterns), figsize=(3.2 * len(patterns), 2.8), squeeze=False)
    for ax, (h, p) in zip(axes[0], patterns.items()):
        width = 0.8 / len(p.ov)
        for i, u in enumerate(p.ov):
            ax.bar((torch.arange(len(u)) + i * width).numpy(), u.numpy(), width=width, label=f"H{i} μ={u[-1]:.2f}")
        ax.set_xticks(range(p.d + 1), [f"x{j}" for j in range(p.d)] + ["y"])
        ax.set_title(f"{h} head{'s' if h > 1 else ''}", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("OV read-out W_V W_O W_U per head (≈ (0,…,0, μ_h))", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_omega_mu(patterns: dict[int, estimators.HeadPatterns], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4, 3.5))
    for h, p in patterns.items():
        ax.scatter(p.omega.numpy(), p.mu.numpy(), label=f"{h} heads", s=30)
    span = max(abs(p.omega).max().item() for p in patterns.values()) * 1.3
    omega = torch.linspace(0.02, span, 100)
    for sign in (1, -1):
        ax.plot((sign * omega).numpy(), (sign * PAPER["omega_mu"] / omega).numpy(), "k:", lw=0.8)
    ax.scatter([PAPER["omega"], -PAPER["omega"]], [PAPER["mu"], -PAPER["mu"]], marker="x", c="k", label="paper")
    ax.set_ylim(-2 * PAPER["mu"] - 1, 2 * PAPER["mu"] + 1)
    ax.axhline(0, color="grey", lw=0.5), ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("ω_h (x-block diagonal of W_KQ)"), ax.set_ylabel("μ_h (y entry of OV read-out)")
    ax.set_title("heads pair as (+ω,+μ)/(−ω,−μ); dotted: ωμ = 0.45", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_losses(model_mse: dict[int, float], estimator_mse: dict[str, float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = [f"{h} head{'s' if h > 1 else ''}" for h in model_mse] + list(estimator_mse)
    values = list(model_mse.values()) + list(estimator_mse.values())
    colours = ["C0"] * len(model_mse) + ["C1"] * len(estimator_mse)
    ax.bar(names, values, color=colours)
    for i, v in enumerate(values):
        ax.text(i, v + 0.005, f"{v:.3f}", ha="center", fontsize=7)
    ax.axhline(PAPER["mse_2"], color="k", ls=":", lw=0.8, label="paper, 2 heads (0.24)")
    ax.axhline(PAPER["mse_1"], color="k", ls="--", lw=0.8, label="paper, 1 head (0.40)")
    ax.set_ylabel("validation MSE (noise σ²=0.1 included)")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def patching(model: Any, task: ICLRegression, n: int) -> dict[str, list[float]]:
    results = {}
    for engine in ("activation_patching", "path_patching"):
        if engine in circuits.engines.names():
            graph = circuits.discover(model, task, engine=engine, n=n, seed=0)
            results[engine] = graph.matrix()[0].tolist()
    return results


def plot_patching(results: dict[str, list[float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4, 3))
    width = 0.8 / max(len(results), 1)
    for i, (engine, scores) in enumerate(results.items()):
        ax.bar((torch.arange(len(scores)) + i * width).numpy(), scores, width=width, label=engine)
    heads = len(next(iter(results.values()))) if results else 0
    ax.set_xticks([i + 0.4 - width / 2 for i in range(heads)], [f"L0H{i}" for i in range(heads)])
    ax.set_ylabel("normalised patching score")
    ax.set_title("2-head model: circuits.discover", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pattern_rows(p: estimators.HeadPatterns) -> dict[str, Any]:
    products = p.pair_products()
    return {"omega": p.omega.tolist(), "mu": p.mu.tolist(), "diagonal_fraction": p.diagonal_fraction().tolist(),
            "diagonal_cv": p.diagonal_cv().tolist(), "ov_last_fraction": p.last_entry_fraction().tolist(),
            "zero_sum_ratio": p.zero_sum_ratio(), "omega_mu": products.tolist()}


def table(summary: dict[str, Any]) -> str:
    mse, two = summary["mse"], summary["patterns"]["2"]
    check = lambda ok: "yes" if ok else "NO"  # noqa: E731
    rows = [("quantity", "measured", "target", "paper", "met"),
            ("MSE, 1 head", f"{mse['1']:.3f}", "> 0.35", "0.40", check(mse["1"] > 0.35)),
            ("MSE, 2 heads", f"{mse['2']:.3f}", "< 0.26", "0.24", check(mse["2"] < 0.26)),
            ("MSE, 4 heads", f"{mse['4']:.3f}", "", "", "")]
    rows += [(f"MSE, {name}", f"{v:.3f}", "", "", "") for name, v in summary["estimators"].items()]
    rows += [("2h |Σμ|/max|μ|", f"{two['zero_sum_ratio']:.3f}", "< 0.05", "≈ 0", check(two["zero_sum_ratio"] < 0.05))]
    for name, key, target, ok in (("diagonal fraction", "diagonal_fraction", "> 0.9", lambda v: v > 0.9),
                                  ("diagonal CV", "diagonal_cv", "< 0.1", lambda v: v < 0.1),
                                  ("OV last-entry fraction", "ov_last_fraction", "> 0.9", lambda v: v > 0.9)):
        values = two[key]
        rows.append((f"2h {name}", " ".join(f"{v:.3f}" for v in values), target, "", check(all(map(ok, values)))))
    rows += [("2h ω_h", " ".join(f"{v:+.3f}" for v in two["omega"]), "", "±0.13", ""),
             ("2h μ_h", " ".join(f"{v:+.2f}" for v in two["mu"]), "", "±3.45", ""),
             ("2h ω_h·μ_h", " ".join(f"{v:.3f}" for v in two["omega_mu"]), "", "0.45", "")]
    rows += [(f"patching {engine}", " ".join(f"{v:.3f}" for v in scores), "", "", "")
             for engine, scores in summary["patching"].items()]
    rows += [(f"training, {h} head{'s' if h != '1' else ''} (s)", f"{s:.0f}", "<= 300", "",
              check(s <= 300) if s > 1 else "cached") for h, s in summary["training_seconds"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def run(quick: bool = False, out: Path = Path("out/icl_regression")) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    task = ICLRegression()
    trainer = ICLRegression(schedule=QUICK_SCHEDULE, train_batch=128) if quick else task
    trained, seconds = train_models(trainer, progress=not quick)
    n_val = 4096 if quick else 32768
    mse = {str(h): task.validation_mse(m, n=n_val) for h, m in trained.items()}
    estimator_mse = estimator_losses(task, n_val, 12345)
    pats = {h: estimators.patterns(m) for h, m in trained.items()}
    patch = patching(trained[2], task, n=64 if quick else 512)
    summary = {"quick": quick, "schedule": trainer.schedule, "mse": mse, "estimators": estimator_mse,
               "patterns": {str(h): pattern_rows(p) for h, p in pats.items()}, "patching": patch,
               "training_seconds": {str(h): s for h, s in seconds.items()}}
    plot_kq({h: pats[h] for h in (2, 4)}, out / "kq.png")
    plot_ov(pats, out / "ov.png")
    plot_omega_mu({h: pats[h] for h in (2, 4)}, out / "omega_mu.png")
    plot_losses({h: float(v) for h, v in zip(HEADS, mse.values())}, estimator_mse, out / "loss_vs_heads.png")
    if patch:
        plot_patching(patch, out / "patching.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(summary))
    if "path_patching" not in patch:
        print("path_patching is not registered in circuits.engines: only activation patching was run")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = figure_parser(__doc__, "out/icl_regression", "a few hundred training steps: checks the pipeline")
    args = parser.parse_args(argv)
    run(quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
