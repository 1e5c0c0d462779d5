"""`evaluate`: the task metric of edge circuits, of the whole model and of the empty circuit, and faithfulness.

    circuit = graph.circuit(fraction=0.05, by="absolute")
    result = circuits.evaluate(model, task, [circuit], ablation="patching", n=32)
    result.faithfulness  # [(m_C - m_∅) / (m_full - m_∅)]

Semantics are the MIB benchmark's (``evaluate_graph`` in hannamw/EAP-IG): one forward pass over the clean prompts in
which every receiver's input is the sum of its in-circuit senders' outputs in that pass and its out-of-circuit
senders' ablated outputs, everything that is no edge (positional embeddings, attention-output biases) unchanged
(`circuits.evaluation.rebuild`, `circuits.evaluation.ablations`). ``m_full`` is the plain model's metric and ``m_∅``
the empty circuit's (every edge ablated), so the whole circuit scores 1 and the empty one 0, exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor

from circuits._task import PromptBatch
from circuits.engines.base import on_model, prompts, session
from circuits.engines.kit import Baseline, chunks, metric_means
from circuits.errors import InvalidEdgeError, InvalidOptionError
from circuits.evaluation.ablations import ablated_outputs, check_ablation, sender_outputs
from circuits.evaluation.rebuild import Rebuild
from circuits.nodes import MLP, Edge, Head, Input, all_edges, receivers, senders
from circuits.positions import tokens_at

Circuit = Iterable[Union[Edge, str]]


@dataclass(frozen=True)
class Evaluation:
    """Batch-mean metrics of each circuit (in the order given), of the whole model and of the empty circuit, and
    each circuit's faithfulness ``(m_C − m_∅) / (m_full − m_∅)``."""

    metrics: list[float]
    full: float
    empty: float
    faithfulness: list[float]
    ablation: str
    n: int  # prompts evaluated


def evaluate(model: Any, task: Any, circuits: Union[Circuit, Sequence[Circuit]], *, ablation: str = "patching",
             n: int = 32, seed: int = 1, reference: Optional[Union[PromptBatch, Tensor]] = None,
             memory_mb: float = 512.0) -> Evaluation:
    """Evaluate edge circuits (each a set of `Edge`s or edge names, e.g. from ``graph.circuit``; one set alone is one
    circuit) of `model` on `task`'s `n` prompts for `seed` (default 1: held out from the engines' default 0). Edges
    may act at one position (``Edge.position``: a token index or a span of the task's prompts; docs/positional.md):
    outside the circuit an edge is ablated at the tokens where the circuit does not hold it.

    ablation: what an edge outside the circuit carries: ``"patching"`` (its sender's output on the corrupted
    prompt), ``"mean"``, ``"mean_positional"`` (over `reference`) or ``"zero"`` (`circuits.evaluation.ablations`).
    reference: the prompts of the means: a `PromptBatch` or token ids ``[batch, pos]`` (read at their last position);
    default the task's `n` prompts for ``seed + 1``. Circuits are stacked into passes of at most `memory_mb`.
    Bad input (an edge the model lacks, an unknown ablation) raises a typed error before any forward pass.
    """
    check_ablation(ablation)
    circuits = _as_circuits(circuits)
    index = EdgeIndex.of(model)
    for circuit in circuits:
        index.check(circuit)
    positional = any(edge.position is not None for circuit in circuits for edge in circuit)
    with session(model):
        batch = prompts(model, task, n, seed)
        at = batch if positional else None  # every circuit's mask gets the batch and position axes, to stack them
        for position in {edge.position for circuit in circuits for edge in circuit} - {None}:
            tokens_at(batch, position)  # a span the prompts lack, a token beyond them: refused before any pass
        if ablation.startswith("mean"):
            reference = _reference(model, task, n, seed + 1, reference)
        rebuild, clean_logits = prepare(model, task, batch, ablation, reference)
        full = float(metric_means(task, clean_logits, batch)[0])
        empty = float(rebuild.metrics(index.mask[None])[0])
        values = _metrics(rebuild, circuits, index, at, full, empty, memory_mb)
    faithfulness = Baseline(clean=full, corrupted=empty).normalise(torch.tensor(values) - empty, "denoising")
    return Evaluation(values, full, empty, [float(f) for f in faithfulness], ablation, batch.size)


def prepare(model: Any, task: Any, batch: PromptBatch, ablation: str,
            reference: Optional[PromptBatch]) -> tuple[Rebuild, Tensor]:
    """The rebuilt pass for `batch` (ready for `model`): the senders' ablated outputs from one plain pass (two for
    patching and the means), and the plain model's read-out logits on the clean prompts."""
    logits, clean = sender_outputs(model, batch.clean, batch.position)
    return Rebuild(model, task, batch, ablated_outputs(model, batch, ablation, clean, reference), clean[0]), logits


@dataclass(frozen=True)
class EdgeIndex:
    """Where each of a model's edges sits in a ``[sender, receiver]`` mask (`circuits.nodes` orders)."""

    senders: dict[Any, int]
    receivers: dict[tuple[Any, Optional[str]], int]
    mask: Tensor  # [sender, receiver]: True where an edge exists
    edges: frozenset

    @classmethod
    def of(cls, model: Any) -> "EdgeIndex":
        sent = {node: i for i, node in enumerate(senders(model))}
        received = {node: i for i, node in enumerate(receivers(model))}
        edges = frozenset(all_edges(model))
        mask = torch.zeros(len(sent), len(received), dtype=torch.bool)
        for edge in edges:
            mask[sent[edge.sender], received[edge.receiver, edge.input]] = True
        return cls(sent, received, mask, edges)

    def check(self, circuit: frozenset) -> None:
        """`InvalidEdgeError` naming an edge of `circuit` that is no edge of this model (at any position)."""
        for edge in circuit:
            if edge.plain not in self.edges:
                raise InvalidEdgeError(f"edge {edge.name!r} is not an edge of this model; expected an edge of "
                                       f"circuits.nodes.all_edges(model) ({len(self.edges)} edges)")

    def ablated(self, circuit: frozenset, batch: Optional[PromptBatch] = None) -> Tensor:
        """``[sender, receiver]``: True for the model's edges outside `circuit`. With `batch` (needed for a circuit
        with positional edges) ``[sender, receiver, batch, pos]``: True where an edge is outside the circuit at that
        prompt's token (a positional edge keeps its edge at its own tokens only: a token index, or a span resolved
        per prompt through ``batch.spans``; a plain edge keeps it everywhere)."""
        self.check(circuit)
        keep = torch.zeros_like(self.mask)
        at: dict[tuple[int, int], Tensor] = {}
        for edge in circuit:
            cell = (self.senders[edge.sender], self.receivers[edge.receiver, edge.input])
            if edge.position is None:
                keep[cell] = True
            elif batch is None:
                raise InvalidEdgeError(f"edge {edge.name!r} acts at one position; expected a batch to resolve it "
                                       "(circuits.evaluate gives one)")
            else:
                at[cell] = at.get(cell, False) | tokens_at(batch, edge.position)
        plain = self.mask & ~keep
        if batch is None:
            return plain
        out = plain[:, :, None, None].repeat(1, 1, *batch.clean.shape[:2])
        for (s, r), tokens in at.items():
            out[s, r] &= ~tokens
        return out


def head_circuit(model: Any, heads: Iterable[Union[Head, str]]) -> frozenset:
    """The edge circuit of a head circuit: every edge whose sender is the input, an MLP or one of `heads` (the
    heads outside it are ablated wherever they are read, exactly as ablating their outputs)."""
    kept = {Head.in_model(model, head) for head in heads}
    return frozenset(e for e in all_edges(model) if isinstance(e.sender, (Input, MLP)) or e.sender in kept)


def _metrics(rebuild: Rebuild, circuits: list[frozenset], index: EdgeIndex, batch: Optional[PromptBatch],
             full: float, empty: float, memory_mb: float) -> list[float]:
    """Each circuit's metric: the whole circuit's is the plain model's and the empty one's the empty circuit's
    (no pass needed); the others in stacked passes. Masks are built per pass (`batch`: positional ones, which are
    ``[sender, receiver, batch, pos]`` each), not all at once."""
    values: list[Optional[float]] = [None] * len(circuits)
    todo = []
    every = index.mask if batch is None else index.mask[:, :, None, None].expand(-1, -1, *batch.clean.shape[:2])
    for i, circuit in enumerate(circuits):
        mask = index.ablated(circuit, batch)
        if not mask.any():
            values[i] = full
        elif torch.equal(mask, every):
            values[i] = empty
        else:
            todo.append(i)
    for part in chunks(len(todo), copies_per_pass(rebuild, memory_mb, positional=batch is not None)):
        rows = [todo[j] for j in part]
        masks = torch.stack([index.ablated(circuits[row], batch) for row in rows])
        for row, value in zip(rows, rebuild.metrics(masks).tolist()):
            values[row] = value
    return [float(v) for v in values]


def copies_per_pass(rebuild: Rebuild, memory_mb: float, positional: bool = False) -> int:
    """Circuits per stacked pass within `memory_mb`: per copy, every sender's swap and a layer's rebuilt inputs, and
    a positional circuit's mask (a byte per sender, receiver, prompt and position)."""
    cfg, batch = rebuild.model.cfg, rebuild.batch
    n_pos = batch.clean.shape[1]
    d_mlp = 0 if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
    floats = batch.size * n_pos * (cfg.d_model * (len(rebuild.ablated) + 6 * cfg.n_heads + 8)
                                   + 3 * cfg.n_heads * n_pos + 2 * d_mlp)
    itemsize = torch.finfo(cfg.dtype).bits // 8 if isinstance(getattr(cfg, "dtype", None), torch.dtype) else 4
    mask = batch.size * n_pos * len(rebuild.ablated) * len(receivers(cfg)) if positional else 0
    return max(1, int(memory_mb * 2**20 // (itemsize * floats + mask)))


def _as_circuits(circuits: Any) -> list[frozenset]:
    """A list of circuits, each a frozenset of Edges (names parsed); one set of edges alone is one circuit."""
    if isinstance(circuits, (set, frozenset)) and all(isinstance(e, (Edge, str)) for e in circuits):
        circuits = [circuits]
    if isinstance(circuits, (str, Edge)) or not isinstance(circuits, Iterable):
        raise InvalidOptionError(f"circuits={circuits!r}; expected a list of circuits, each a set of Edges "
                                 "(e.g. [graph.circuit(k=20, by='absolute')])")
    out = []
    for i, circuit in enumerate(circuits):
        if isinstance(circuit, (str, Edge)) or not isinstance(circuit, Iterable):
            raise InvalidOptionError(f"circuits[{i}] = {circuit!r}; expected a set of Edges (or edge names)")
        out.append(frozenset(Edge.parse(e) for e in circuit))
    return out


def _reference(model: Any, task: Any, n: int, seed: int, given: Any) -> PromptBatch:
    """The prompts means are taken over, ready for `model`: `given` (a PromptBatch, or token ids read at their last
    position) or the task's `n` prompts for `seed`."""
    if given is None:
        return prompts(model, task, n, seed)
    if isinstance(given, Tensor):
        if given.ndim != 2 or given.is_floating_point():
            raise InvalidOptionError(f"reference of shape {tuple(given.shape)}; expected token ids [batch, pos] or a "
                                     "PromptBatch")
        position = torch.full((given.shape[0],), given.shape[1] - 1)
        given = PromptBatch(clean=given, corrupted=given, answer=torch.zeros(given.shape[0], dtype=torch.long),
                            position=position)
    if not isinstance(given, PromptBatch):
        raise InvalidOptionError(f"reference={type(given).__name__}; expected a PromptBatch or token ids [batch, pos]")
    return on_model(model, given)


__all__ = ["EdgeIndex", "Evaluation", "evaluate", "head_circuit", "prepare"]
