"""Indirect-object identification on the bundled SmolLM2: which heads play Wang et al.'s (2022) roles, and whether
each engine's circuit includes them.

    python -m analyses.ioi [--quick] [--out DIR]

Prompts: the shipped set `tasks.ioi.DATA` (ABC-corrupted; only prompts the model gets right). The role tests run
on the first `n_roles` prompts, every engine (`circuits.discover`) and the S-inhibition path patching on the first
`n_engines` of them (the same prompts for every engine). Roles, per query head, with the thresholds below
(`analyses.ioi_heads` for the measurements):

- name mover: attends from the end to IO (mean attention >= ATTENTION) more than to S1 and S2 together, copies
  names (copying score >= COPYING) and raises IO over S directly (mean direct logit attribution > 0); a negative
  name mover attends the same way, copies negatively (score >= COPYING) and lowers IO (attribution < 0);
- S-suppression (copy suppression, McDougall et al. 2023, aimed at S): attends from the end to S1 and S2 together
  (>= ATTENTION) more than to IO, copies negatively (>= COPYING) and raises IO over S (attribution > 0);
- S-inhibition: attends from the end to S2 (>= ATTENTION) in a layer below a receiver, and its clean output,
  matters to the queries of the heads that write the answer directly (name movers and S-suppression heads): its
  ABC-run output, path-patched into those queries alone in the clean run, loses >= S_INHIBITION of the
  clean-corrupted logit difference gap (noising, as Wang et al.; summed over the receivers);
- duplicate token: attends from S2 to S1 (>= ATTENTION);
- induction: attends from S2 to the token after S1 (>= ATTENTION).

Copying scores are computed for `Settings.candidates` heads (`candidates`). Beside the roles, the prompt-free
checks on repeated random tokens (duplicate and induction attention). Then each engine's top-`k` heads by |score|
and the ranks of the role heads in them. Writes heads.png (role scores and
engine scores per head) and summary.json (every number, the thresholds, prompt counts, seconds).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import circuits  # noqa: E402
import tasks  # noqa: E402
from analyses import ioi_heads  # noqa: E402
from analyses._script import at_most_two_threads, figure_parser  # noqa: E402
from circuits import tokens  # noqa: E402
from tasks import ioi  # noqa: E402

ATTENTION = 0.2  # mean attention probability (for ~20-token prompts; uniform attention is ~0.05)
COPYING = 0.5  # share of names in the head's OV top 5 (Wang et al.: name movers > 0.9, average heads < 0.2)
S_INHIBITION = 0.02  # share of the clean-corrupted gap lost through the answer-writing heads' queries (noising)
# Head -> logits only for path patching (its node score: the direct effect); node scores only for CD-T.
ENGINE_OPTIONS = {"path_patching": {"receivers": ("logits",), "per_input": False}, "cdt": {"receiver_count": 0}}


def engine_options(model: Any, engine: str, settings: "Settings") -> dict[str, Any]:
    options = dict(ENGINE_OPTIONS.get(engine, {}))
    if engine == "path_patching" and settings.senders_from > 0:
        options["senders"] = tuple(h.name for h in circuits.nodes.all_heads(model) if h.layer >= settings.senders_from)
    if engine == "edge_attribution":
        options["method"] = settings.edge_method
    return options


@dataclass(frozen=True)
class Settings:
    n_roles: int = 64  # prompts for attention, attribution and copying
    n_engines: int = 16  # prompts for each engine and for the S-inhibition path patching
    engines: tuple[str, ...] = ("activation_patching", "path_patching", "edge_attribution", "cdt")
    k: int = 20  # an engine's circuit: its top-k heads by |score| (of 270)
    candidates: int = 30  # heads tested for copying (`candidates`)
    repeated_n: int = 4  # sequences of repeated random tokens
    senders_from: int = 0  # path patching (head -> logits): senders in this layer and later
    edge_method: str = "eap_ig_inputs"  # edge attribution's method


# The pipeline in a few passes: 4 prompts for the roles, 2 for the S-inhibition test and two quick engines (EAP's
# one gradient pass; path patching from layer 26 on).
QUICK = Settings(n_roles=4, n_engines=2, engines=("edge_attribution", "path_patching"), k=20, candidates=12,
                 repeated_n=1, senders_from=26, edge_method="eap")


def spans(records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {role: torch.tensor([r["meta"]["positions"][role] for r in records]) for role in ioi.ROLES}


def run(quick: bool = False, out: Path = Path("out/ioi"), model: Any = None,
        settings: Optional[Settings] = None, data: Path = ioi.DATA, reuse: bool = False) -> dict[str, Any]:
    """The analysis (module docstring); each engine's head scores are kept in ``out/graphs/<engine>.json``, and
    with `reuse` scores already there for the same engine, options and n are read instead of recomputed."""
    start = time.perf_counter()
    settings = settings or (QUICK if quick else Settings())
    model = model if model is not None else circuits.models.bundled()
    out.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in data.read_text().splitlines() if line.strip()][: settings.n_roles]
    batch = tasks.prompts(records).tokenized(model)
    clean, end = tokens.padded(batch.clean, tokens.pad_id(model))
    where = spans(records)
    assert torch.equal(where["end"], end), "the records' end positions are not their last tokens"
    answer, foil = torch.tensor(batch.answer), torch.tensor(batch.foil)

    measured = ioi_heads.measure(model, clean, where, answer, foil)
    attention = {pair: scores.mean(-1) for pair, scores in measured.attention.items()}
    dla, total = measured.dla.mean(-1), measured.logit_diff
    repeated = ioi_heads.repeated(model, n=settings.repeated_n)
    names = measured.resid_after_block0[torch.arange(len(end)), where["IO"]]
    copying = ioi_heads.copying(model, names, answer, candidates(attention, dla, settings.candidates))
    roles = find_roles(attention, dla, copying)
    say(start, f"roles on {len(records)} prompts: {roles}")

    engine_task = tasks.prompts(records[: settings.n_engines], name="ioi")
    roles["s_inhibition"], s_inhibition_scores = s_inhibition(model, engine_task, settings.n_engines, attention,
                                                              roles["name_mover"] + roles["s_suppression"])
    say(start, f"S-inhibition: {roles['s_inhibition']} ({s_inhibition_scores})")
    scores, meta, seconds = {}, {}, {}
    (out / "graphs").mkdir(exist_ok=True)
    for engine in settings.engines:
        t0 = time.perf_counter()
        kept = out / "graphs" / f"{engine}.json"  # node scores and meta only (an EAP graph has ~10^5 edges)
        options = {"progress": False, **engine_options(model, engine, settings)}
        previous = read_scores(kept) if reuse and kept.exists() else None
        if previous is None or not same_run(previous["meta"], settings.n_engines, options):
            previous = slim(circuits.discover(model, engine_task, engine, n=settings.n_engines, seed=0, **options))
            kept.write_text(json.dumps(previous, default=list))
        scores[engine], meta[engine] = torch.tensor(previous["matrix"]), previous["meta"]
        seconds[engine] = round(time.perf_counter() - t0, 1)
        say(start, f"{engine}: {seconds[engine]} s")
    comparison = {engine: compare(matrix, roles, settings.k) for engine, matrix in scores.items()}

    summary = {
        "quick": quick, "settings": asdict(settings), "model": model.cfg.model_name, "data": data.name,
        "thresholds": {"attention": ATTENTION, "copying": COPYING, "s_inhibition": S_INHIBITION,
                       "copying_candidates": settings.candidates},
        "n_roles": len(records), "logit_diff_mean": round(float(total.mean()), 3),
        "roles": {role: [head_record(h, attention, dla, copying, repeated, s_inhibition_scores) for h in heads]
                  for role, heads in roles.items()},
        "s_inhibition_candidates": {circuits.Head(*h).name: paths for h, paths in s_inhibition_scores.items()},
        "top": top_lists(attention, dla, repeated),
        "engines": {engine: {**comparison[engine], "seconds": seconds[engine], "n": meta[engine]["n"],
                             "metric_clean": round(meta[engine]["metric_clean"], 3),
                             "metric_corrupted": round(meta[engine]["metric_corrupted"], 3)}
                    for engine in scores},
        "seconds": None,
    }
    summary["headline"] = headline(summary)
    draw(attention, dla, repeated, scores, roles, out / "heads.png")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    report(summary)
    return summary


def slim(graph: Any) -> dict[str, Any]:
    """A graph's head scores and the meta that says how they were made."""
    keys = ("engine", "options", "task", "n", "metric_clean", "metric_corrupted")
    return {"meta": {k: graph.meta[k] for k in keys}, "matrix": graph.matrix().tolist()}


def read_scores(path: Path) -> dict[str, Any]:
    """Kept scores: a `slim` file, or a whole graph's JSON (`HeadGraph.to_json`)."""
    data = json.loads(path.read_text())
    return data if "matrix" in data else slim(circuits.HeadGraph.from_json(path))


def same_run(meta: dict[str, Any], n: int, options: dict[str, Any]) -> bool:
    """Whether kept scores were made on the same n prompts of this data with these engine options."""
    kept = meta.get("options", {})
    plain = lambda value: list(value) if isinstance(value, (tuple, list)) else value  # noqa: E731
    return meta.get("n") == n and meta.get("task") == "ioi" and all(
        k == "progress" or plain(kept.get(k)) == plain(v) for k, v in options.items())


def say(start: float, text: str) -> None:
    print(f"[{time.perf_counter() - start:6.0f} s] {text}", flush=True)


def candidates(attention: dict, dla: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The heads tested for copying: the k/3 most attentive from the end to IO, the k/3 most attentive from the
    end to S (S1 + S2) and the k/3 of largest |attribution| (fewer when they overlap)."""
    scores = [attention[("end", "IO")], attention[("end", "S1")] + attention[("end", "S2")], dla.abs()]
    chosen: list[tuple[int, int]] = []
    for values in scores:
        for flat in values.flatten().argsort(descending=True)[: k // 3].tolist():
            head = divmod(flat, values.shape[1])
            if head not in chosen:
                chosen.append(head)
    return chosen


def find_roles(attention: dict, dla: torch.Tensor, copying: dict) -> dict[str, list[tuple[int, int]]]:
    """Heads passing each role's tests (module docstring), strongest first."""
    to_io, to_s1, to_s2 = attention[("end", "IO")], attention[("end", "S1")], attention[("end", "S2")]
    movers, negative, suppression = [], [], []
    for (layer, head), (positive, negated) in copying.items():
        to_s = to_s1[layer, head] + to_s2[layer, head]
        attends_io = to_io[layer, head] >= ATTENTION and to_io[layer, head] > to_s
        if attends_io and positive >= COPYING and dla[layer, head] > 0:
            movers.append((layer, head))
        if attends_io and negated >= COPYING and dla[layer, head] < 0:
            negative.append((layer, head))
        if to_s >= ATTENTION and to_s > to_io[layer, head] and negated >= COPYING and dla[layer, head] > 0:
            suppression.append((layer, head))
    by = lambda scores: (lambda h: -float(scores[h]))  # noqa: E731
    return {"name_mover": sorted(movers, key=lambda h: -float(dla[h])),
            "negative_name_mover": sorted(negative, key=lambda h: float(dla[h])),
            "s_suppression": sorted(suppression, key=lambda h: -float(dla[h])),
            "duplicate_token": sorted(above(attention[("S2", "S1")]), key=by(attention[("S2", "S1")])),
            "induction": sorted(above(attention[("S2", "S1+1")]), key=by(attention[("S2", "S1+1")]))}


def above(scores: torch.Tensor, threshold: float = ATTENTION) -> list[tuple[int, int]]:
    return [tuple(h) for h in (scores >= threshold).nonzero().tolist()]


def s_inhibition(model: Any, task: Any, n: int, attention: dict, receivers: list[tuple[int, int]]
                 ) -> tuple[list[tuple[int, int]], dict[tuple[int, int], dict[str, float]]]:
    """Heads attending from the end to S2, below a receiver, whose paths to the `receivers`' queries (the heads that
    write the answer directly: name movers and S-suppression heads) carry at least S_INHIBITION of the gap in all
    (path patching, noising: the share of the gap lost when they carry the ABC run's output); each path's score."""
    if not receivers:
        return [], {}
    last = max(layer for layer, _ in receivers)
    senders = [h for h in above(attention[("end", "S2")]) if h[0] < last]
    if not senders:
        return [], {}
    name = lambda h: circuits.Head(*h).name  # noqa: E731
    # Noising, as Wang et al.: the ABC run's sender output into the clean run, read only by the receivers' queries
    # (denoising would leave the receivers reading the ABC run's names, whose logits the metric does not count).
    graph = circuits.discover(model, task, "path_patching", n=n, seed=0, senders=[name(h) for h in senders],
                              receivers=[name(h) for h in receivers], inputs=("q",), per_input=False,
                              direction="noising", progress=False)
    through = {h: {name(r): round(float(graph.nx.edges[name(h), name(r)]["score"]), 4) for r in receivers
                   if graph.nx.has_edge(name(h), name(r))} for h in senders}
    total = {h: sum(paths.values()) for h, paths in through.items()}
    return sorted([h for h in senders if total[h] >= S_INHIBITION], key=lambda h: -total[h]), through


def compare(scores: torch.Tensor, roles: dict[str, list[tuple[int, int]]], k: int) -> dict[str, Any]:
    """An engine's top-k heads by |score| and, per role, which role heads are in them and each one's rank among the
    measured heads (None for a head the engine did not measure, e.g. path patching's senders from a layer on)."""
    flat = scores.flatten()
    measured = (~flat.isnan()).nonzero().flatten()
    order = measured[flat[measured].abs().argsort(descending=True)].tolist()
    n_heads = scores.shape[1]
    rank = {divmod(flat_index, n_heads): r + 1 for r, flat_index in enumerate(order)}
    top = [divmod(i, n_heads) for i in order[:k]]
    return {"top": [[circuits.Head(*h).name, round(float(scores[h]), 4)] for h in top], "measured": len(order),
            "roles": {role: {"in_top_k": [circuits.Head(*h).name for h in heads if h in top], "of": len(heads),
                             "ranks": {circuits.Head(*h).name: rank.get(h) for h in heads}}
                      for role, heads in roles.items()}}


def head_record(head: tuple[int, int], attention: dict, dla: torch.Tensor, copying: dict, repeated: dict,
                through: dict) -> dict[str, Any]:
    record = {"head": circuits.Head(*head).name, "dla": round(float(dla[head]), 4)}
    record.update({f"{q}->{k}": round(float(v[head]), 3) for (q, k), v in attention.items()})
    if head in copying:
        record["copying"], record["copying_negative"] = copying[head]
    if head in through:
        record["paths_to_queries"] = through[head]
    record.update({f"repeated_{kind}": round(float(v[head]), 3) for kind, v in repeated.items()})
    return record


def top_lists(attention: dict, dla: torch.Tensor, repeated: dict, k: int = 5) -> dict[str, list]:
    """The k largest heads of each score, whatever the thresholds say."""
    def best(scores: torch.Tensor, sign: float = 1.0) -> list:
        flat = (sign * scores).flatten().argsort(descending=True)[:k].tolist()
        return [[circuits.Head(*divmod(i, scores.shape[1])).name, round(float(scores.flatten()[i]), 3)] for i in flat]

    lists = {f"attention {q}->{k_}": best(v) for (q, k_), v in attention.items()}
    lists.update({"dla_positive": best(dla), "dla_negative": best(dla, -1.0)})
    lists.update({f"repeated_{kind}": best(v) for kind, v in repeated.items()})
    return lists


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    numbers = {f"{role}_heads": len(heads) for role, heads in summary["roles"].items()}
    for engine, result in summary["engines"].items():
        for role, found in result["roles"].items():
            if found["of"]:
                numbers[f"{engine}/{role}_in_top_k"] = len(found["in_top_k"]) / found["of"]
    return numbers


def draw(attention: dict, dla: torch.Tensor, repeated: dict, engines: dict[str, torch.Tensor],
         roles: dict[str, list[tuple[int, int]]], path: Path) -> None:
    panels = [(attention[("end", "IO")], "attention end → IO"), (attention[("end", "S2")], "attention end → S2"),
              (attention[("S2", "S1")], "attention S2 → S1"), (attention[("S2", "S1+1")], "attention S2 → S1+1"),
              (dla, "direct logit attribution IO − S")]
    panels += [(scores, f"{engine} (normalised)") for engine, scores in engines.items()]
    marks = {"name_mover": "o", "negative_name_mover": "x", "s_suppression": "D", "s_inhibition": "s",
             "duplicate_token": "^", "induction": "v"}
    columns = 5
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flatten()[len(panels):]:
        ax.axis("off")
    for ax, (values, title) in zip(axes.flatten(), panels):
        signed = bool((values.nan_to_num() < 0).any())
        bound = float(values.nan_to_num().abs().max()) or 1.0
        image = ax.imshow(values.numpy(), cmap="RdBu" if signed else "Blues", vmin=-bound if signed else 0,
                          vmax=bound, aspect="auto")
        for role, heads in roles.items():
            if heads:
                ax.scatter([h for _, h in heads], [l for l, _ in heads], marker=marks[role], facecolors="none",
                           edgecolors="#d95f02", s=30, label=role)
        ax.set(xlabel="head", ylabel="layer", title=title)
        ax.title.set_fontsize(9)
        fig.colorbar(image, ax=ax)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(summary: dict[str, Any]) -> None:
    print(f"{summary['n_roles']} prompts, mean logit diff IO - S {summary['logit_diff_mean']}")
    for role, heads in summary["roles"].items():
        print(f"{role}: {[h['head'] for h in heads]}")
    for name, heads in summary["top"].items():
        print(f"  top {name}: {heads}")
    for engine, result in summary["engines"].items():
        print(f"{engine} ({result['seconds']} s, n={result['n']}): top {[h for h, _ in result['top'][:10]]}")
        for role, found in result["roles"].items():
            print(f"  {role}: {len(found['in_top_k'])} of {found['of']} in top {len(result['top'])}; ranks among "
                  f"{result['measured']} measured: {found['ranks']}")
    print(f"{summary['seconds']} s")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = figure_parser(__doc__, "out/ioi", "4 prompts for the role tests, 2 for EAP and path patching from L26")
    parser.add_argument("--reuse", action="store_true", help="read engine scores already in OUT/graphs (same engine, "
                        "options and n) instead of recomputing them")
    parser.add_argument("--engines", nargs="*", help="engines to run, none after a bare --engines (default: "
                        f"{' '.join(Settings.engines)}; quick: {' '.join(QUICK.engines)})")
    args = parser.parse_args(argv)
    at_most_two_threads()
    settings = QUICK if args.quick else Settings()
    if args.engines is not None:
        settings = replace(settings, engines=tuple(args.engines))
    return run(quick=args.quick, out=args.out, reuse=args.reuse, settings=settings)


if __name__ == "__main__":
    main()
