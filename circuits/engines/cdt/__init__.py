"""CD-T: contextual decomposition for transformers (Hsu, Lin et al. 2024), on TransformerLens 4 bridges.

Every activation is split into rel (caused by chosen source heads) and irrel (the rest), rel + irrel being
the real activation, and both are carried through the network in one forward pass (the rules are in
`circuits.engines.cdt.rules`, docs/cdt.md sets each next to the reference code's). `decompose` is the
decomposition itself; the `CDT` engine scores heads with it:

- node (and head -> logits edge): ``(m(rel + irrel) - m(irrel)) / (m_clean - m_corrupted)``, with the head's
  z as the source at every position and the corrupted prompts' z as the baseline (rel = z_clean - z_corrupted);
- head -> head edge into a receiver: the receiver's z at the read-out position, rel part projected on the
  receiver's own change: ``sum_b <z_rel, dz> / sum_b <dz, dz>`` with dz = z_clean - z_corrupted (the
  reference notebook's "dot" reduction, normalised; its "l1" reduction is attribute ``score_l1``).

Each source set needs one decomposition; sets are stacked along the batch axis, chunked to `memory_mb`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor

from circuits import forward
from circuits._task import Inputs
from circuits.engines import base, coverage, kit
from circuits.engines.cdt.model import check_model
from circuits.engines.cdt.propagation import Decomposition, Propagation
from circuits.engines.kit import Measurement
from circuits.errors import IncompatibleModelError, InvalidOptionError
from circuits.graph import HeadGraph
from circuits.nodes import LOGITS, Head, all_heads
from circuits.positions import check_kind, graph_record, label_masks

Source = Union[str, Head, tuple[Union[str, Head], int]]

__all__ = ["CDT", "CDTScores", "Decomposition", "decompose", "source_masks"]


def decompose(model: Any, tokens: Inputs, sources: Sequence[Sequence[Source]],
              baseline: Optional[Tensor] = None, *, readout: Optional[Tensor] = None,
              keep_residual: bool = True, keep_z: bool = True, dtype: Optional[torch.dtype] = None,
              real_totals: bool = True) -> Decomposition:
    """Decompose `model`'s run on `tokens` (token ids ``[batch, pos]`` or float inputs) for each source set.

    sources: a list of source sets, each a list of heads (``"L0H1"`` or `Head`: every position) or
        ``(head, position)`` pairs.
    baseline: None (a source's whole z is rel) or z values ``[n_layers, pos, head, d_head]`` (e.g. a mean)
        or ``[batch, n_layers, pos, head, d_head]`` (per example): a source's rel = z - baseline, irrel = baseline.
    readout: optional read-out position per prompt; the returned tensors are then taken there only.
    dtype: compute in this dtype (e.g. ``torch.float64``) instead of the model's; rel and irrel can each be far
        larger than their sum (SmolLM2's residual stream reaches 2e4), so float32 sums carry that much rounding.
    real_totals: take every total (attention output, linear-map outputs) from one real pass and set
        irrel = total - rel (default; fast, and rel + irrel is then the real activation by construction);
        False: both parts through every rule, as the reference does (what the exactness tests check).
    """
    with torch.no_grad():
        propagation = Propagation(model, tokens, readout, dtype, real_totals)
        masks = source_masks(model, sources, propagation.n_pos)
        return propagation.run(masks, checked_baseline(model, baseline, propagation), keep_residual, keep_z)


def source_masks(model: Any, sources: Sequence[Sequence[Source]], n_pos: int) -> Tensor:
    """``[n_layers, set, pos, head]`` booleans, True at each set's sources; typed errors on bad names."""
    if isinstance(sources, (str, Head)) or not all(isinstance(s, (list, tuple)) for s in sources):
        raise InvalidOptionError(f"sources={sources!r}; expected a list of source sets, e.g. [['L0H1'], ['L1H0', ('L1H2', 3)]]")
    cfg = model.cfg
    masks = torch.zeros(cfg.n_layers, len(sources), n_pos, cfg.n_heads, dtype=torch.bool)
    for index, source_set in enumerate(sources):
        for source in source_set:
            if isinstance(source, tuple):
                if len(source) != 2 or not isinstance(source[1], int) or not 0 <= source[1] < n_pos:
                    raise InvalidOptionError(f"source {source!r}; expected (head, position) with a position in [0, {n_pos})")
                head, position = Head.in_model(model, source[0]), source[1]
                masks[head.layer, index, position, head.head] = True
            else:
                head = Head.in_model(model, source)
                masks[head.layer, index, :, head.head] = True
    return masks


def checked_baseline(model: Any, baseline: Optional[Tensor], propagation: Propagation) -> Optional[Tensor]:
    """The baseline as ``[batch, n_layers, pos, head, d_head]`` on the model's device."""
    if baseline is None:
        return None
    cfg = model.cfg
    shape = (cfg.n_layers, propagation.n_pos, cfg.n_heads, cfg.d_head)
    if tuple(baseline.shape) == shape:
        baseline = baseline[None].expand(propagation.n_batch, *shape)
    if tuple(baseline.shape) != (propagation.n_batch, *shape):
        raise InvalidOptionError(f"baseline has shape {tuple(baseline.shape)}; expected {shape} (a mean) or "
                                 f"{(propagation.n_batch, *shape)} (per example)")
    return baseline.to(propagation.device, propagation.real_resid[0].dtype)


@dataclass(frozen=True)
class CDTScores:
    """What CD-T measures on a batch, unnormalised: per source head the metric change when its rel part is
    removed, ``m(irrel) - m(rel + irrel)`` ``[n_layers, n_heads]``, and per (sender, receiver) pair
    ``[sender layer, head, receiver layer, head]`` the receiver's rel share (``dot``: projected on its clean -
    corrupted change; ``l1``: the reference's mean|rel| / (mean|rel| + mean|irrel|))."""

    nodes: Float[Tensor, "n_layers n_heads"]
    dot: Tensor
    l1: Tensor
    # with positions: the same with the source head at one label's tokens alone (last axis: `labels`)
    labels: tuple[str, ...] = ()
    nodes_at: Optional[Tensor] = None  # [n_layers, n_heads, label]
    dot_at: Optional[Tensor] = None  # [sender layer, head, receiver layer, head, label]


@base.options(renamed={"receivers": "receiver_count", "top_k": "sources_per_step"})
@dataclass(frozen=True)
class CDT(base.EngineBase):
    receiver_count: int = 10  # head -> head edges into this many receivers, the top heads by |node score| (0: none)
    iterative: bool = False  # the paper's discovery instead: from the logits, sources_per_step sources per step
    sources_per_step: int = 2  # iterative: sources kept per step
    memory_mb: float = 256.0  # budget for one stacked pass (sets x batch rows, both parts)
    positions: Optional[str] = None  # "tokens" or "spans": also each source head at each token (span) alone
    progress: bool = True  # a progress bar over decomposed passes on large models (kit.progress); not in results

    name = "cdt"

    def __post_init__(self) -> None:
        for field, low in (("receiver_count", 0), ("sources_per_step", 1)):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidOptionError(f"{field}={value!r}; expected an integer >= {low}")
        if not isinstance(self.iterative, bool):
            raise InvalidOptionError(f"iterative={self.iterative!r}; expected True or False")
        kit.check_memory(self.memory_mb)
        check_kind(self.positions)

    @property
    def score_meaning(self) -> str:
        return ("node and head->logits edge (effect 'total'): (m(rel+irrel) - m(irrel)) / (m_clean - m_corrupted), "
                "the head's z at every position as the CD-T source, the corrupted prompts' z as its baseline (clean "
                "run); head->head edge (effect 'share'): the receiver's z at the read-out position, its rel part for "
                "the sender projected on the receiver's clean - corrupted change, sum<z_rel, dz> / sum<dz, dz> "
                "(score_l1: the reference's l1 share mean|rel| / (mean|rel| + mean|irrel|))")

    def check(self, model: Any) -> None:
        check_model(model)  # a model without a rule fails before any work

    def measure(self, model: Any, task: Any, batch: Any) -> Measurement[CDTScores]:
        """`CDTScores` for a batch you built yourself."""
        check_model(model)
        with base.session(model):
            runs = kit.Runs.prepare(model, task, batch, "denoising", kit.every_layer(model, "z"))
            return runs.measured(self._scores(model, task, runs))

    def _scores(self, model: Any, task: Any, runs: kit.Runs) -> CDTScores:
        batch, cfg = runs.batch, model.cfg
        layers = range(cfg.n_layers)
        device = forward.input_device(model)  # each layer's z lies on its own device in a model spread over devices
        clean = [runs.source[layer, "z"].to(device) for layer in layers]
        corrupted = [runs.base[layer, "z"].to(device) for layer in layers]
        z_base = torch.stack(corrupted, dim=1)  # [batch, layer, pos, head, d_head]
        rows = torch.arange(batch.size, device=device)
        position = batch.position.to(device)
        change = torch.stack([c[rows, position] - b[rows, position] for c, b in zip(clean, corrupted)])
        propagation = Propagation(model, batch.clean, batch.position)
        heads = all_heads(model)
        # one source set per head (at every position) and, with positions, per head and label
        labelled_masks, labels = label_masks(batch, self.positions, task) if self.positions else (None, ())
        if labels:  # row 0: every token (the whole head), row 1 + i: label i's tokens alone
            labelled_masks = torch.cat([torch.ones_like(labelled_masks[:1]), labelled_masks]).cpu()
        sets = len(heads) * (1 + len(labels))
        masks = source_masks(model, [[h] for h in heads], propagation.n_pos)
        z_base = checked_baseline(model, z_base, propagation)
        nodes = torch.zeros(sets)
        dot = torch.zeros(sets, cfg.n_layers, cfg.n_heads)
        l1 = torch.zeros(sets, cfg.n_layers, cfg.n_heads)
        change = change.to(propagation.device)  # [layer, batch, head, d_head]
        per_pass = self._sets_per_pass(model, propagation)
        # Sets grouped by their head's layer: a pass starts at its sources' layer (below it rel is 0).
        per_layer = cfg.n_heads * (1 + len(labels))
        groups = [range(layer * per_layer, (layer + 1) * per_layer) for layer in layers]
        passes = [range(g.start + c.start, g.start + c.stop) for g in groups for c in kit.chunks(len(g), per_pass)]
        bar = kit.progress(model, len(passes), f"{self.name}: decomposed passes", self.progress)
        for chunk in passes:
            bar.update(1)
            sources = masks[:, [s // (1 + len(labels)) for s in chunk]]
            if labels:  # set s is head s // (1 + L) at the tokens of mask row s % (1 + L)
                at = labelled_masks[[s % (1 + len(labels)) for s in chunk]]
                sources = sources[:, :, None] & at[None, :, :, :, None]  # [layer, set, batch, pos, head]
            part = propagation.run(sources, z_base, keep_z=True)
            self._check_exact(part, runs.source_logits)
            total = kit.metric_means(task, (part.rel + part.irrel).flatten(0, 1), batch, len(chunk))
            rest = kit.metric_means(task, part.irrel.flatten(0, 1), batch, len(chunk))
            nodes[chunk.start:chunk.stop] = rest - total
            z_rel = torch.stack(part.z_rel, dim=1)  # [set, layer, batch, head, d_head]
            z_irrel = torch.stack(part.z_irrel, dim=1)
            dot[chunk.start:chunk.stop] = torch.einsum("slbhe,lbhe->slh", z_rel, change).cpu()
            rel_size, irrel_size = z_rel.abs().mean((2, 4)), z_irrel.abs().mean((2, 4))
            l1[chunk.start:chunk.stop] = (rel_size / (rel_size + irrel_size + 1e-12)).cpu()
        bar.close()
        dot = dot / change.pow(2).sum((1, 3)).cpu().clamp_min(1e-12)
        shape = (cfg.n_layers, cfg.n_heads, cfg.n_layers, cfg.n_heads)
        nodes, dot, l1 = (t.view(len(heads), 1 + len(labels), *t.shape[1:]) for t in (nodes, dot, l1))
        every = CDTScores(nodes[:, 0].view(cfg.n_layers, cfg.n_heads), dot[:, 0].view(shape), l1[:, 0].view(shape))
        if not labels:
            return every
        return replace(every, labels=tuple(labels), nodes_at=nodes[:, 1:].reshape(cfg.n_layers, cfg.n_heads, -1),
                       dot_at=dot[:, 1:].movedim(1, -1).reshape(*shape, -1))

    def _sets_per_pass(self, model: Any, propagation: Propagation) -> int:
        cfg = model.cfg
        d_mlp = 0 if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
        floats = 2 * propagation.n_batch * propagation.n_pos * (
            8 * cfg.d_model + 4 * cfg.n_heads * (cfg.d_head + propagation.n_pos) + 3 * d_mlp)
        return max(1, int(self.memory_mb * 2**20 // (4 * floats)))

    @staticmethod
    def _check_exact(part: Decomposition, clean_logits: Tensor) -> None:
        """rel + irrel must be the model's own logits: a part of the model the rules misread would show here."""
        total = (part.rel[0] + part.irrel[0]).to(clean_logits.device)
        error = float((total - clean_logits).abs().max())
        if error > 1e-3 * max(1.0, float(clean_logits.abs().max())):
            raise IncompatibleModelError(f"CD-T's rel + irrel logits differ from the model's by {error:.3g}: this "
                                         "model computes something the CD-T rules do not describe")

    # --- the graph ------------------------------------------------------------------------------------
    def graph(self, model: Any, measurement: Measurement[CDTScores]) -> HeadGraph:
        """Removing a head's rel part from the clean run is the noising direction: normalised as such."""
        scores = measurement.values
        nodes = measurement.baseline().normalise(scores.nodes, "noising")
        graph = HeadGraph(n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads)
        nodes_at = None if scores.nodes_at is None else measurement.baseline().normalise(scores.nodes_at, "noising")
        at = lambda values: {"positions": dict(zip(scores.labels, values.tolist()))} if scores.labels else {}  # noqa: E731
        for head in all_heads(model):
            score = float(nodes[head.layer, head.head])
            graph.add_node(head, score)
            graph.add_edge(head, LOGITS, score, effect="total",
                           **at(nodes_at[head.layer, head.head] if nodes_at is not None else None))
        pairs = self._circuit(model, nodes, scores.dot) if self.iterative else self._into_top(model, nodes)
        for sender, receiver in pairs:
            index = (sender.layer, sender.head, receiver.layer, receiver.head)
            graph.add_edge(sender, receiver, float(scores.dot[index]), effect="share", score_l1=float(scores.l1[index]),
                           **at(scores.dot_at[index] if scores.dot_at is not None else None))
        if scores.labels:
            graph.meta["positions"] = graph_record(
                self.positions, scores.labels, "CD-T's rules split a nonlinearity's output between sources in a way "
                                               "that is not additive over positions; score is the source head at "
                                               "every token")
        receivers = "the iterative discovery's pairs" if self.iterative else f"the top {self.receiver_count} heads"
        graph.meta["unscored_edges"] = coverage.unscored(
            model, graph, "CD-T's sources are head outputs: no edge from embed or an MLP; head -> head shares into "
            f"{receivers} only, for q, k and v together; no MLP receiver; head -> logits is the total effect")
        return graph

    def _into_top(self, model: Any, nodes: Tensor) -> list[tuple[Head, Head]]:
        receivers = ranked(nodes, all_heads(model))[: self.receiver_count]
        return [(s, r) for r in receivers for s in all_heads(model) if s.layer < r.layer]

    def _circuit(self, model: Any, nodes: Tensor, edges: Tensor) -> list[tuple[Head, Head]]:
        """The paper's iterative discovery: the `sources_per_step` heads for the logits are the first targets;
        each step scores every head below a target by the sum of its edge scores into the targets and keeps the
        `sources_per_step` best as the next targets, until no head lies below them."""
        heads = all_heads(model)
        targets = ranked(nodes, heads)[: self.sources_per_step]
        kept, pairs = set(targets), []
        while True:
            candidates = [s for s in heads if s not in kept and any(s.layer < t.layer for t in targets)]
            if not candidates:
                return pairs
            sums = torch.tensor([sum(float(edges[s.layer, s.head, t.layer, t.head]) for t in targets if s.layer < t.layer)
                                 for s in candidates])
            chosen = [candidates[i] for i in sums.abs().argsort(descending=True)[: self.sources_per_step].tolist()]
            pairs += [(s, t) for s in chosen for t in targets if s.layer < t.layer]
            kept.update(chosen)
            targets = chosen


def ranked(scores: Float[Tensor, "n_layers n_heads"], heads: list[Head]) -> list[Head]:
    """Heads by decreasing |score| (ties: model order)."""
    order = sorted(range(len(heads)), key=lambda i: -abs(float(scores[heads[i].layer, heads[i].head])))
    return [heads[i] for i in order]
