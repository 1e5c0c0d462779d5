"""`compare`: several engines' HeadGraphs for one task and model, side by side.

    graphs = [circuits.discover(model, task, engine=name) for name in circuits.engines.for_trained_models()]
    result = circuits.compare(graphs, model, task)
    result.spearman        # {("activation_patching", "cdt"): 0.93, ...}  rank agreement of |head scores|
    result.jaccard         # {(a, b): overlap of the top-k heads}
    result.curves          # {engine: Curve}: faithfulness of the top heads under mean ablation, CPR and CMD
    result.random          # the same for random circuits of each size (mean over draws)
    result.kinds           # {engine: "edges" | "heads"}: the kind of circuit each engine's row judges
    result.edges           # MIB edge curves (`Curves`) of the edge engines and random edge circuits, or None
    print(result.table()); result.draw("compare.png")

Heads are ranked by |score| (a head that hurts the behaviour matters as much as one that helps); heads an engine
did not score rank last. Faithfulness curves follow the MIB benchmark (Mueller et al. 2025) at the level of heads:
keep the top fraction x of heads, mean-ablate the rest over a reference batch (`circuits.comparison.faithfulness`),
faithfulness = (m_C − m_∅) / (m_full − m_∅); CPR is the area under the curve (higher is better), CMD the area
between the curve and 1 (lower is better), both by the trapezoid rule over the fraction kept.

Graphs that score edges into heads' q/k/v inputs (path patching, edge attribution: `comparison.edges.is_edge_graph`)
are judged as MIB judges them, by **edge circuits** under edge ablation (`circuits.evaluation.curves.edge_curves`:
CPR by signed score, CMD by |score|, against random edge circuits); the others (activation patching, clamped
training, CD-T while its head -> head edges measure shares) by **head circuits**. Each row of `rows`/`table` says
which; head curves are computed for every graph (the head-level view of the edge engines stays in `curves`).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from circuits import engines
from circuits.comparison.edges import EDGES, HEADS, curves_of_edges, kinds as circuit_kinds
from circuits.comparison.faithfulness import MeanAblation, circuit_sizes, cmd, cpr, masks
from circuits.comparison.ranking import jaccard, ranked_heads, score_agreement, spearman, top_heads
from circuits._task import PromptBatch
from circuits.engines.base import on_model, prompts, session, task_batch
from circuits.errors import InvalidOptionError, MismatchedGraphsError, UnknownNameError
from circuits.evaluation.ablations import ABLATIONS
from circuits.evaluation.curves import Curves
from circuits.graph import HeadGraph
from circuits.nodes import all_heads

__all__ = ["Comparison", "Curve", "compare", "jaccard", "ranked_heads", "spearman", "top_heads"]


@dataclass(frozen=True)
class Curve:
    """Faithfulness against the number (and fraction) of heads kept, with its MIB areas."""

    sizes: list[int]
    fraction: list[float]
    faithfulness: list[float]

    @property
    def cpr(self) -> float:
        return cpr(self.fraction, self.faithfulness)

    @property
    def cmd(self) -> float:
        return cmd(self.fraction, self.faithfulness)

    def at(self, size: int) -> float:
        return self.faithfulness[self.sizes.index(size)]


@dataclass
class Comparison:
    task: str
    model: str
    engines: list[str]
    k: int  # the top-k of `jaccard`
    top: dict[str, list[str]]  # engine -> its heads, best first
    spearman: dict[tuple[str, str], float]
    jaccard: dict[tuple[str, str], float]
    curves: dict[str, Curve]
    random: Curve  # mean over the random circuits of each size
    random_draws: list[list[float]]  # [size][draw] (every circuit of a size when there are at most `draws`)
    metric_full: float
    metric_empty: float
    settings: dict[str, Any] = field(default_factory=dict)
    shared_prompts: int = 0  # faithfulness prompts that are also among the engines' prompts (0: truly held out)
    kinds: dict[str, str] = field(default_factory=dict)  # engine -> "edges" | "heads" (the circuits its row judges)
    edges: Optional[Curves] = None  # MIB edge curves of the edge engines and of random edge circuits

    @property
    def held_out_note(self) -> str:
        """Empty when the faithfulness prompts are held out; otherwise what is not (the table prints it)."""
        if not self.shared_prompts:
            return ""
        n = self.settings.get("n")
        seed = self.settings.get("seed")
        return (f"not held out: {self.shared_prompts} of the {n} faithfulness prompts (seed {seed}) "
                "are also among the prompts the engines scored (the task ignores seed, or draws from few prompts): "
                "on those, faithfulness is measured on the engines' own prompts")

    @property
    def empty_edge_note(self) -> str:
        """Empty unless some edge engine's circuits are all empty after pruning (no chosen edge on an input ->
        read-out path, e.g. a graph with no edge from the input): then which, since their CPR is 0 by construction."""
        if self.edges is None:
            return ""
        empty = [name for name, c in self.edges.curves.items() if not any(c.edges_signed) and not any(c.edges_absolute)]
        return "" if not empty else (f"{', '.join(empty)}: every edge circuit is empty after pruning (none of its "
                                     "scored edges lies on an input -> read-out path: it scores no edge from the "
                                     "input), so its edge CPR is 0 and CMD about 1 whatever its ranking")

    def kind(self, name: str) -> str:
        return self.kinds.get(name, HEADS)

    def rows(self) -> list[dict[str, Any]]:
        """One row per engine and one per random baseline (``random``: head circuits; ``random_edges``: edge
        circuits, when an engine is judged by edges): the kind of circuit, its CPR and CMD, the head-level
        faithfulness of the top k heads (every engine) and the top heads."""
        out = []
        names = [*self.engines, "random"] + (["random_edges"] if self.edges is not None else [])
        for name in names:
            kind = EDGES if name == "random_edges" else self.kind(name)
            head_curve = (self.random if name in ("random", "random_edges") else self.curves[name])
            if kind == EDGES:
                curve = self.edges.random if name == "random_edges" else self.edges.curves[name]
            else:
                curve = head_curve
            out.append({"task": self.task, "engine": name, "kind": kind, "cpr": curve.cpr, "cmd": curve.cmd,
                        f"faithfulness_top{self.k}": (head_curve.at(self.k) if name != "random_edges"
                                                      and self.k in head_curve.sizes else float("nan")),
                        "top_heads": "" if name.startswith("random") else " ".join(self.top[name][: self.k])})
        return out

    def table(self) -> str:
        """Markdown: per engine CPR, CMD and its top-k heads; then Spearman and top-k Jaccard per engine pair."""
        lines = [f"**{self.task}** on {self.model}: metric full {self.metric_full:.3f}, all heads mean-ablated "
                 f"{self.metric_empty:.3f}", ""]
        if self.held_out_note:
            lines += [f"> **Warning:** {self.held_out_note}.", ""]
        if self.edges is not None:
            lines += [f"Edge circuits: {self.edges.ablation} ablation of the {self.edges.total_edges} edges, metric "
                      f"full {self.edges.full:.3f}, empty circuit {self.edges.empty:.3f}; head circuits: mean "
                      "ablation of hook_z. Each kind is measured against random circuits of its own kind.", ""]
            lines += [f"> **Note:** {note}.", ""] if (note := self.empty_edge_note) else []
        lines += [f"| engine | circuit | CPR ↑ | CMD ↓ | head faithfulness of top {self.k} | "
                  f"top {self.k} heads (by abs. score) |", "|---|---|---|---|---|---|"]
        for row in self.rows():
            lines.append(f"| {row['engine']} | {row['kind']} | {row['cpr']:.3f} | {row['cmd']:.3f} | "
                         f"{row[f'faithfulness_top{self.k}']:.3f} | {row['top_heads']} |")
        if self.spearman:
            lines += ["", f"| engine pair | Spearman of abs. scores | Jaccard of top {self.k} |", "|---|---|---|"]
            lines += [f"| {a} · {b} | {rho:.3f} | {self.jaccard[a, b]:.3f} |" for (a, b), rho in self.spearman.items()]
        return "\n".join(lines)

    def draw(self, path: Optional[Union[str, Path]] = None) -> Any:
        """Faithfulness curves (random draws as a band) beside the Spearman and Jaccard matrices."""
        from circuits.comparison.drawing import draw_comparison

        return draw_comparison(self, path)


def compare(graphs: Union[Sequence[Any], Mapping[str, Any]], model: Any, task: Any, *, n: int = 32,
            seed: int = 1, reference_seed: Optional[int] = None, sizes: Optional[Sequence[int]] = None,
            draws: int = 5, k: Optional[int] = None, memory_mb: float = 256.0, edges: bool = True,
            edge_ablation: str = "patching") -> Comparison:
    """Compare engines' HeadGraphs of `task` on `model`.

    graphs: HeadGraphs from registered engines (labelled by ``meta["engine"]``), or a mapping label -> graph.
    n, seed: the clean prompts faithfulness is measured on (default seed 1: held out from engines' default 0).
    reference_seed: the prompts whose mean ``hook_z`` replaces ablated heads (default ``seed + 1``, also `n`).
    sizes: circuit sizes in heads (0 and all heads are always added; default: see `circuit_sizes`).
    draws: random circuits per size, the baseline (all of them where a size has no more than `draws`).
    k: the top-k of the Jaccard overlap (default: 5% of the heads, at least 2, fewer than all).
    edges: judge graphs that score q/k/v edges by MIB edge circuits (`comparison.edges`; `draws` random edge
    circuits per fraction, `edge_ablation` as in `circuits.evaluate`); False judges every graph by its heads.
    Bad input raises a typed error before any forward pass.
    """
    labelled = _labelled(graphs, model, task)
    cfg = model.cfg
    total = cfg.n_layers * cfg.n_heads
    sizes = circuit_sizes(total, sizes)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise InvalidOptionError(f"draws={draws!r}; expected a positive number of random circuits per size")
    k = max(1, min(total - 1, max(2, round(0.05 * total)))) if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= total:
        raise InvalidOptionError(f"k={k!r}; expected a number of heads in [1, {total}]")
    reference_seed = seed + 1 if reference_seed is None else reference_seed
    if edges not in (True, False):
        raise InvalidOptionError(f"edges={edges!r}; expected True (edge circuits for edge graphs) or False")
    if edge_ablation not in ABLATIONS:
        raise InvalidOptionError(f"edge_ablation={edge_ablation!r}; expected one of {ABLATIONS}")

    names = list(labelled)
    ranked = {name: ranked_heads(graph) for name, graph in labelled.items()}
    pairs = list(itertools.combinations(names, 2))
    rho = {(a, b): score_agreement(labelled[a], labelled[b]) for a, b in pairs}
    overlap = {(a, b): jaccard(top_heads(labelled[a], k), top_heads(labelled[b], k)) for a, b in pairs}

    generator = torch.Generator().manual_seed(seed)
    every = [head.name for head in all_heads(model)]
    with session(model):
        held_out = task_batch(model, task, n, seed)
        shared = shared_rows(held_out, [task_batch(model, task, n_, seed_) for n_, seed_ in engine_batches(labelled)])
        if shared:
            warnings.warn(f"compare: {shared} of the {held_out.size} faithfulness prompts (seed {seed}) are also among "
                          f"the engines' prompts, so they are not held out: the task {task.name!r} ignores seed, or "
                          "draws from few prompts", stacklevel=2)
        batch, reference = on_model(model, held_out), prompts(model, task, n, reference_seed)
        ablation = MeanAblation.prepare(model, task, batch, reference, memory_mb=memory_mb)
        empty = float(ablation.metrics(masks([[]], cfg.n_layers, cfg.n_heads))[0])
        engine_values, random_values = [], []
        for size in sizes:
            stacked = [ranked[name][:size] for name in names] + random_circuits(every, size, draws, generator)
            if size == 0:  # every circuit is the empty one: m_C = m_∅ by definition
                values = [0.0] * len(stacked)
            else:
                values = ablation.faithfulness(masks(stacked, cfg.n_layers, cfg.n_heads), empty).tolist()
            engine_values.append(values[: len(names)])
            random_values.append(values[len(names):])
    fraction = [size / total for size in sizes]
    curves = {name: Curve(sizes, fraction, [row[i] for row in engine_values]) for i, name in enumerate(names)}
    random = Curve(sizes, fraction, [float(np.mean(row)) for row in random_values])
    kinds = circuit_kinds(labelled) if edges else {name: HEADS for name in names}
    edge_result = curves_of_edges(model, task, {name: labelled[name] for name in names if kinds[name] == EDGES},
                                  ablation=edge_ablation, n=n, seed=seed, draws=draws, memory_mb=memory_mb)
    return Comparison(task=task.name, model=_model_name(model), engines=names, k=k, top=ranked, spearman=rho,
                      jaccard=overlap, curves=curves, random=random, random_draws=random_values,
                      metric_full=ablation.full, metric_empty=empty,
                      settings=dict(n=n, seed=seed, reference_seed=reference_seed, draws=draws, sizes=sizes,
                                    ranking="absolute score, unscored heads last", ablation="mean of hook_z",
                                    edge_ablation=edge_ablation if edge_result is not None else None),
                      shared_prompts=shared, kinds=kinds, edges=edge_result)


def engine_batches(graphs: Mapping[str, HeadGraph]) -> list[tuple[int, int]]:
    """The (n, seed) of the prompts each graph's engine scored, once each (from ``meta``)."""
    found = {(graph.meta["n"], graph.meta["seed"]) for graph in graphs.values()
             if isinstance(graph.meta.get("n"), int) and isinstance(graph.meta.get("seed"), int)}
    return sorted(found)


def shared_rows(batch: PromptBatch, others: Sequence[PromptBatch]) -> int:
    """How many prompts of `batch` also appear in `others` (same clean and corrupted prompt up to the read-out,
    same answer and foil; padding ignored)."""
    seen = {key for other in others for key in _row_keys(other)}
    return sum(key in seen for key in _row_keys(batch))


def _row_keys(batch: PromptBatch) -> list[bytes]:
    keys = []
    for i in range(batch.size):
        end = int(batch.position[i]) + 1
        parts = [batch.clean[i, :end], batch.corrupted[i, :end], batch.answer[i]]
        parts += [] if batch.foil is None else [batch.foil[i]]
        keys.append(b"|".join(t.detach().cpu().contiguous().numpy().tobytes() for t in parts))
    return keys


def random_circuits(heads: list[str], size: int, draws: int, generator: torch.Generator) -> list[list[str]]:
    """`draws` uniformly random circuits of `size` heads; every circuit of that size instead when there are
    no more than `draws` of them (then their mean is the exact expectation, not an estimate)."""
    if math.comb(len(heads), size) <= draws:
        return [list(c) for c in itertools.combinations(heads, size)]
    return [[heads[i] for i in torch.randperm(len(heads), generator=generator)[:size].tolist()] for _ in range(draws)]


def _model_name(model: Any) -> str:
    return getattr(model.cfg, "model_name", None) or type(model).__name__


def _labelled(graphs: Any, model: Any, task: Any) -> dict[str, HeadGraph]:
    """Graphs by label, checked: at least one, all HeadGraphs of this task, shaped like this model, from
    registered engines."""
    items = list(graphs.items()) if isinstance(graphs, Mapping) else [(None, g) for g in graphs]
    if not items:
        raise InvalidOptionError(f"graphs={graphs!r}; expected at least one HeadGraph to compare")
    cfg, model_name = model.cfg, _model_name(model)
    labelled: dict[str, HeadGraph] = {}
    for index, (label, graph) in enumerate(items):
        if not isinstance(graph, HeadGraph):
            raise InvalidOptionError(f"graphs[{index}] is a {type(graph).__name__}; expected a HeadGraph")
        meta = graph.meta
        engine = meta.get("engine")
        if engine not in engines.names():
            raise UnknownNameError("engine", engine, engines.names())
        if meta.get("task") != task.name:
            raise MismatchedGraphsError(f"graphs[{index}] ({engine}) is of task {meta.get('task')!r}; "
                                        f"expected {task.name!r}, the task compared")
        shape = (graph.n_layers, graph.n_heads)
        if shape != (cfg.n_layers, cfg.n_heads) or meta.get("model", model_name) != model_name:
            raise MismatchedGraphsError(
                f"graphs[{index}] ({engine}) is of model {meta.get('model')!r} with {shape[0]} layers x {shape[1]} "
                f"heads; expected {model_name!r} with {cfg.n_layers} x {cfg.n_heads}, the model compared")
        label = label or engine
        if label in labelled:
            label = f"{label}#{index}"
        labelled[label] = graph
    return labelled
