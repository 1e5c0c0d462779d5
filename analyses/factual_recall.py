"""Factual recall on the bundled SmolLM2, next to Lv et al. 2024's claims.

    python -m analyses.factual_recall [--quick] [--out DIR]

One prompt per fact the model gets right at top-1 ("The capital of {subject} is", BOS first), read at the last
position. Writes into DIR:

- layers.png: each layer's direct contribution (attention, MLP) to the correct answer's logit, through the final
  RMSNorm scale and centred over the vocabulary (Lv et al.'s anti-overconfidence test: the paper finds the last
  layer's contribution negative on GPT-2 and OPT), for the capital relation and, as lines, the other relations;
- topic_heads.png: each head's direct logit attribution onto the *subject* token's unembedding ("task heads move
  the topic to the last position"), single-token subjects only, and the top heads' attention to the subject;
- regression.png: the MLP-as-activation regression: in the layer of each top topic head, the MLP's output at the
  read-out regressed on that layer's head outputs (one coefficient per head, an intercept, over prompts);
  beta > 0: the MLP adds along the head's output (the block's total weight 1 + beta > 1: amplified),
  beta < 0: suppressed (beta = -1: erased);
- paths.png / paths.json: the path-patching head graph to the logits (`circuits.discover`, `factual_recall`);
- summary.json: every number, with prompt counts.

The per-component contributions sum to the centred answer logit exactly (up to float error; checked and
reported as ``decomposition_max_error``), so nothing is left out of the per-layer picture.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import circuits  # noqa: E402
from analyses import _readout  # noqa: E402
from tasks import facts  # noqa: E402
from tasks.factual_recall import FactualRecall  # noqa: E402
from analyses._script import at_most_two_threads, figure_parser  # noqa: E402

PAPER = {"last_layer_direct_contribution": "negative on average (anti-overconfidence; GPT-2, OPT)",
         "topic_heads": "task-specific heads move the topic token to the last position",
         "mlp_activation": "the next MLP amplifies the topic heads' outputs and erases others"}
ISSUE_MEASURED = {"facts": 38, "last_layer_mean": 5.4, "last_layer_mlp": 4.6, "last_layer_attention": 0.8,
                  "negative_facts": 1}


@dataclass(frozen=True)
class Settings:
    n_paths: int = 16  # prompt pairs for path patching
    senders_from: int = 0  # path patching senders: heads of this layer and later
    top_heads: int = 3  # topic heads whose layers get the regression
    relations: tuple[str, ...] = ("capital", "language", "landmark")


QUICK = Settings(n_paths=2, senders_from=27, relations=("capital",))


@dataclass(frozen=True)
class Prompts:
    subjects: tuple[str, ...]
    tokens: torch.Tensor  # [batch, pos], right-padded
    position: torch.Tensor  # read-out position
    answer: torch.Tensor  # the correct answer's token
    subject_token: torch.Tensor  # the subject's token (-1 when the subject is several tokens)
    subject_position: torch.Tensor  # where that token sits (-1 likewise)


def known_prompts(model: Any, known: facts.Known) -> Prompts:
    """One prompt per fact in `known` (the filter's survivors under its template)."""
    rel = facts.relation(known.relation)
    template = known.template
    prefix = facts.encode(model, template.split(facts.PLACEHOLDER)[0].rstrip())
    ids, subject_token, subject_position = [], [], []
    for s in known.subjects:
        prompt = facts.encode(model, template.format(subject=s))
        piece = facts.encode(model, " " + s, bos=False)
        # A single-token subject whose prompt tokenises as prefix + subject + rest: its token is the topic.
        single = len(piece) == 1 and prompt[:len(prefix)] == prefix and prompt[len(prefix)] == piece[0]
        subject_token.append(piece[0] if single else -1)
        subject_position.append(len(prefix) if single else -1)
        ids.append(prompt)
    tokens, position = facts.padded(ids, facts.pad_token(model))
    answers = torch.tensor([facts.answer_token(model, rel.facts[s]) for s in known.subjects])
    return Prompts(known.subjects, tokens, position, answers, torch.tensor(subject_token),
                   torch.tensor(subject_position))


def contributions(model: Any, prompts: Prompts, readout: _readout.ReadOut) -> dict[str, torch.Tensor]:
    """Centred direct contributions to the answer's logit: embed [batch], attn and mlp [layer, batch], heads
    [layer, head, batch], and the centred answer logit of the full run [batch]."""
    along = _readout.directions(model, prompts.answer)
    with torch.no_grad():
        logits = circuits.forward.logits(model, prompts.tokens, prompts.position).cpu()
    centred = logits.gather(1, prompts.answer[:, None])[:, 0] - logits.mean(-1)
    return {"embed": _readout.direct(readout.embed, readout.scale, along),
            "attn": _readout.direct(readout.attn, readout.scale, along),
            "mlp": _readout.direct(readout.mlp, readout.scale, along),
            "heads": _readout.direct(readout.heads, readout.scale, along), "logit": centred}


def mlp_regression(readout: _readout.ReadOut, layer: int) -> dict[str, Any]:
    """The layer's MLP output regressed on its heads' outputs, over prompts, with an intercept vector:
    mlp[b] ≈ c + Σ_h beta_h head_h[b]. Returns beta per head and the fit's R²."""
    heads = readout.heads[layer]  # [head, batch, d]
    y = readout.mlp[layer]  # [batch, d]
    x = heads - heads.mean(1, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    design = x.flatten(1).T.double()  # [(batch d), head]
    beta = torch.linalg.lstsq(design, y.flatten().double()[:, None]).solution[:, 0]
    residual = y.flatten().double() - design @ beta
    r2 = 1 - residual.pow(2).sum() / y.flatten().double().pow(2).sum()
    return {"layer": layer, "beta": [round(float(b), 3) for b in beta], "r2": round(float(r2), 3)}


def attention_to_subject(model: Any, prompts: Prompts, heads: list[tuple[int, int]]) -> dict[str, float]:
    """Mean attention from the read-out position to the subject token, for each head (single-token subjects)."""
    keep = prompts.subject_position >= 0
    rows = torch.arange(int(keep.sum()))
    tokens, position, subject = prompts.tokens[keep], prompts.position[keep], prompts.subject_position[keep]
    patterns: dict[int, torch.Tensor] = {}

    def grab(layer: int):
        def hook(pattern: torch.Tensor, hook: Any) -> None:
            patterns[layer] = pattern.detach().cpu()[rows, :, position, subject]  # [batch, head]
        return hook

    layers = sorted({l for l, _ in heads})
    with torch.no_grad(), circuits.hooks.attached(model, [(circuits.hooks.site(model, l, "pattern"), grab(l)) for l in layers]):
        circuits.forward.logits(model, tokens, position)
    return {circuits.Head(l, h).name: round(float(patterns[l][:, h].mean()), 3) for l, h in heads}


def run(quick: bool = False, out: Path = Path("out/factual_recall"), model: Any = None,
        settings: Optional[Settings] = None) -> dict[str, Any]:
    start = time.perf_counter()
    settings = settings or (QUICK if quick else Settings())
    model = model if model is not None else circuits.models.bundled()
    out.mkdir(parents=True, exist_ok=True)
    n_layers = model.cfg.n_layers

    # One task per relation, on its first template; the path patching below reuses the first one's filter.
    recall = {r: FactualRecall(relation=r, templates=facts.relation(r).templates[:1]) for r in settings.relations}
    per_relation: dict[str, Any] = {}
    main: dict[str, Any] = {}
    for relation in settings.relations:
        known = recall[relation].known(model)[0]
        prompts = known_prompts(model, known)
        readout = _readout.read_out(model, prompts.tokens, prompts.position)
        parts = contributions(model, prompts, readout)
        total = parts["embed"] + parts["attn"].sum(0) + parts["mlp"].sum(0)
        last = parts["attn"][-1] + parts["mlp"][-1]
        per_relation[relation] = {
            "known": known.report, "n": len(prompts.subjects),
            "attn_mean": parts["attn"].mean(1).tolist(), "mlp_mean": parts["mlp"].mean(1).tolist(),
            "attn_se": (parts["attn"].std(1) / len(prompts.subjects) ** 0.5).tolist(),
            "mlp_se": (parts["mlp"].std(1) / len(prompts.subjects) ** 0.5).tolist(),
            "last_layer": {"mean": float(last.mean()), "attention": float(parts["attn"][-1].mean()),
                           "mlp": float(parts["mlp"][-1].mean()), "negative_facts": int((last < 0).sum())},
            "negative_layers": [{"layer": l, "attn": round(float(parts["attn"][l].mean()), 3),
                                 "mlp": round(float(parts["mlp"][l].mean()), 3)} for l in range(n_layers)
                                if parts["attn"][l].mean() < 0 or parts["mlp"][l].mean() < 0],
            "most_suppressing_heads": [(circuits.Head(l, h).name, round(v, 3)) for (l, h), v in
                                       lowest(parts["heads"].mean(-1), 5)],
            "decomposition_max_error": float((total - parts["logit"]).abs().max()),
            "centred_answer_logit_mean": float(parts["logit"].mean()),
        }
        if relation == settings.relations[0]:
            main = {"prompts": prompts, "readout": readout, "parts": parts}

    # Topic heads (first relation): direct attribution onto the subject token's unembedding.
    prompts, readout = main["prompts"], main["readout"]
    single = prompts.subject_token >= 0
    along = _readout.directions(model, prompts.subject_token.clamp(min=0))
    topic = _readout.direct(readout.heads, readout.scale, along)[..., single].mean(-1)  # [layer, head]
    top = [lh for lh, _ in highest(topic, settings.top_heads)]
    attention = attention_to_subject(model, prompts, top)
    layers = sorted({l for l, _ in top})
    regression = [mlp_regression(readout, l) for l in layers]

    task = recall[settings.relations[0]]
    senders = tuple(f"L{l}H{h}" for l in range(settings.senders_from, n_layers) for h in range(model.cfg.n_heads))
    graph = circuits.discover(model, task, engine="path_patching", n=settings.n_paths, seed=0, receivers=("logits",),
                              senders=senders)
    graph.to_json(out / "paths.json")
    graph.draw(out / "paths.png", title="factual_recall: path patching, head -> logits")

    summary = {
        "quick": quick, "settings": asdict(settings), "relations": per_relation,
        "topic_heads": [{"head": circuits.Head(l, h).name, "subject_logit": round(v, 3),
                         "attention_to_subject": attention[circuits.Head(l, h).name]}
                        for (l, h), v in highest(topic, settings.top_heads)],
        "topic_prompts": int(single.sum()), "mlp_regression": regression,
        "path_patching_top": graph.top(8, by="absolute"),
        "path_patching_meta": {k: graph.meta[k] for k in ("n", "metric_clean", "metric_corrupted")},
        "paper": PAPER, "issue_measured": ISSUE_MEASURED,
    }
    draw_layers(per_relation, out / "layers.png")
    draw_topic(topic, summary["topic_heads"], out / "topic_heads.png")
    draw_regression(regression, top, out / "regression.png")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    report(summary)
    return summary


def highest(scores: torch.Tensor, k: int) -> list[tuple[tuple[int, int], float]]:
    order = scores.flatten().argsort(descending=True)[:k].tolist()
    return [(divmod(i, scores.shape[1]), float(scores.flatten()[i])) for i in order]


def lowest(scores: torch.Tensor, k: int) -> list[tuple[tuple[int, int], float]]:
    return [(lh, -v) for lh, v in highest(-scores, k)]


# --- figures and the printed table ----------------------------------------------------------------------
def draw_layers(per_relation: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 4.5))
    first, rest = next(iter(per_relation.items())), list(per_relation.items())[1:]
    name, data = first
    layers = range(len(data["attn_mean"]))
    ax.bar([l - 0.2 for l in layers], data["attn_mean"], width=0.4, yerr=data["attn_se"], color="#7570b3",
           label=f"{name}: attention", capsize=1.5)
    ax.bar([l + 0.2 for l in layers], data["mlp_mean"], width=0.4, yerr=data["mlp_se"], color="#d95f02",
           label=f"{name}: MLP", capsize=1.5)
    for other, values in rest:
        ax.plot(layers, [a + m for a, m in zip(values["attn_mean"], values["mlp_mean"])], marker=".",
                label=f"{other}: attention + MLP (n={values['n']})")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="layer", ylabel="direct contribution to the answer logit (centred)",
           title=f"per-layer direct contributions, through the final RMSNorm scale ({name}: n={data['n']} facts)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_topic(topic: torch.Tensor, top: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 7))
    bound = float(topic.abs().max()) or 1.0
    image = ax.imshow(topic.numpy(), cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    ax.set(xlabel="head", ylabel="layer", title="direct logit of the subject token (centred)\n"
           + ", ".join(f"{t['head']} {t['subject_logit']:+.2f} (attn {t['attention_to_subject']:.2f})" for t in top))
    ax.title.set_fontsize(8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_regression(regression: list[dict[str, Any]], top: list[tuple[int, int]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(regression), figsize=(4 * len(regression), 3.5), squeeze=False)
    for ax, fit in zip(axes[0], regression):
        colours = ["#d95f02" if (fit["layer"], h) in top else "#999999" for h in range(len(fit["beta"]))]
        ax.bar(range(len(fit["beta"])), fit["beta"], color=colours)
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(-1, color="black", lw=0.6, ls=":")
        ax.set(xlabel="head (orange: topic head)", ylabel="beta (MLP output on head output)",
               title=f"layer {fit['layer']} MLP, R² = {fit['r2']:.2f}")
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(summary: dict[str, Any]) -> None:
    for relation, data in summary["relations"].items():
        last = data["last_layer"]
        print(f"{data['known']}\n  last layer direct contribution {last['mean']:+.2f} (attention {last['attention']:+.2f},"
              f" MLP {last['mlp']:+.2f}); negative for {last['negative_facts']} of {data['n']}; "
              f"decomposition error {data['decomposition_max_error']:.1e}")
        print(f"  layers with a negative mean part: {data['negative_layers']}")
        print(f"  most suppressing heads: {data['most_suppressing_heads']}")
    print(f"topic heads ({summary['topic_prompts']} single-token subjects): {summary['topic_heads']}")
    print(f"MLP regression: {summary['mlp_regression']}")
    print(f"path patching -> logits: {summary['path_patching_top']}")
    print(f"{summary['seconds']} s")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = figure_parser(__doc__, "out/factual_recall", "capital relation only, path patching from layer 27 on")
    args = parser.parse_args(argv)
    at_most_two_threads()
    return run(quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
