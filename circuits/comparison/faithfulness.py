"""Faithfulness of head circuits under mean ablation (the MIB benchmark's curves, at the level of heads).

A circuit is a set of heads kept; every other head's output is replaced by its mean over a reference batch,
at ``hook_z`` (a head's output is z · W_O, so replacing z replaces exactly that head's contribution). The mean is
taken per position over the reference prompts that have a real token there: in a causal model, positions after a
prompt's read-out are padding or cannot matter, so they are left out; a position no reference prompt reaches
gets the mean over every valid position. Faithfulness is ``(m_C − m_∅) / (m_full − m_∅)`` on the batch means of
the task's metric: 1 for the whole model, 0 for the empty circuit.

Circuits of one size are stacked as copies of the batch into one forward pass, which starts at the first layer
where any of them ablates a head (the clean residual stream entering that layer is cached).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuits import forward, hooks
from circuits.engines.kit import Baseline, chunks, copies_per_pass, metric_means, on_model, read_out_and_cache
from circuits.comparison.ranking import Numbers
from circuits._task import PromptBatch
from circuits.errors import InvalidOptionError
from circuits.evaluation.curves import trapezoid
from circuits.nodes import Head

Masks = Bool[Tensor, "copies n_layers n_heads"]  # True: the head is in the circuit (kept)


def reference_means(model: Any, reference: PromptBatch, n_positions: int) -> list[Float[Tensor, "pos head d_head"]]:
    """Per layer, the mean of ``hook_z`` over the reference prompts at each of `n_positions` positions."""
    causal = model.cfg.attention_dir == "causal"
    reference = on_model(model, reference)
    names = [hooks.site(model, layer, "z") for layer in range(model.cfg.n_layers)]
    _, cache = read_out_and_cache(model, reference.clean, names, reference.position)
    length = reference.clean.shape[1]
    valid = torch.ones(reference.size, length, dtype=torch.bool)
    if causal:  # a prompt's positions after its read-out: padding, or nothing the read-out can see
        valid = torch.arange(length)[None] <= reference.position.cpu()[:, None]
    means = []
    for name in names:
        z = cache[name].float()
        weights = valid.to(z.device, z.dtype)[:, :, None, None]
        overall = (z * weights).sum((0, 1)) / weights.sum()
        counts = weights.sum(0)
        per_position = torch.where(counts > 0, (z * weights).sum(0) / counts.clamp(min=1), overall)
        mean = overall.expand(n_positions, *overall.shape).clone()
        shared = min(n_positions, length)
        mean[:shared] = per_position[:shared]
        means.append(mean.to(cache[name].dtype))
    return means


@dataclass
class MeanAblation:
    """The evaluation batch's clean run, cached, and the reference means; `metrics` runs stacked circuits."""

    model: Any
    task: Any
    batch: PromptBatch  # clean prompts are evaluated; trimmed to the positions the read-out needs
    resid: list[Tensor]  # residual entering each block, clean run
    means: list[Tensor]  # per layer [pos, head, d_head]
    full: float  # the metric mean of the whole model
    memory_mb: float = 256.0

    @classmethod
    def prepare(cls, model: Any, task: Any, batch: PromptBatch, reference: PromptBatch,
                memory_mb: float = 256.0) -> "MeanAblation":
        batch = on_model(model, batch)
        names = [hooks.site(model, layer, "resid_pre") for layer in range(model.cfg.n_layers)]
        logits, cache = read_out_and_cache(model, batch.clean, names, batch.position)
        full = float(metric_means(task, logits, batch)[0])
        means = reference_means(model, reference, batch.clean.shape[1])
        return cls(model, task, batch, [cache[name] for name in names], means, full, memory_mb)

    def metrics(self, keep: Masks) -> Float[Tensor, " copies"]:
        """The metric mean of each circuit in `keep` (heads outside it mean-ablated), in as few stacked
        passes as the memory budget allows (one when it fits)."""
        cfg = self.model.cfg
        if keep.ndim != 3 or keep.shape[1:] != (cfg.n_layers, cfg.n_heads):
            raise InvalidOptionError(f"circuit masks of shape {tuple(keep.shape)}; expected "
                                     f"[copies, n_layers={cfg.n_layers}, n_heads={cfg.n_heads}]")
        per_pass = copies_per_pass(self.model, self.batch, self.memory_mb)
        return torch.cat([self._stacked(keep[part.start:part.stop]) for part in chunks(len(keep), per_pass)])

    def _stacked(self, keep: Masks) -> Tensor:
        copies, n = keep.shape[0], self.batch.size
        ablated_layers = [layer for layer in range(keep.shape[1]) if not keep[:, layer].all()]
        if not ablated_layers:
            return torch.full((copies,), self.full)
        start = ablated_layers[0]
        residual = self.resid[start].repeat(copies, 1, 1)

        def ablating(layer: int):
            row_keep = keep[:, layer].repeat_interleave(n, dim=0)  # [copies * batch, head]

            def hook(z: Tensor, hook: Any) -> Tensor:
                mean = self.means[layer].to(z.device, z.dtype)[: z.shape[1]]
                return torch.where(row_keep.to(z.device)[:, None, :, None], z, mean[None])

            return hook

        fwd = [(hooks.site(self.model, layer, "z"), ablating(layer)) for layer in ablated_layers]
        with hooks.attached(self.model, fwd):
            logits = forward.run_from(self.model, residual, start, self.batch.position.repeat(copies))
        return metric_means(self.task, logits, self.batch, copies)

    def faithfulness(self, keep: Masks, empty: float) -> Float[Tensor, " copies"]:
        """``(m_C − m_∅) / (m_full − m_∅)`` per circuit (`UndefinedScoreError` when m_full = m_∅)."""
        return Baseline(clean=self.full, corrupted=empty).normalise(self.metrics(keep) - empty, "denoising")


def masks(heads: Sequence[Sequence[str]], n_layers: int, n_heads: int) -> Masks:
    """One mask per circuit (a list of head names): True for the heads it keeps."""
    out = torch.zeros(len(heads), n_layers, n_heads, dtype=torch.bool)
    for row, circuit in enumerate(heads):
        for name in circuit:
            head = Head.parse(name)
            out[row, head.layer, head.head] = True
    return out


def circuit_sizes(total: int, sizes: Sequence[int] | None = None) -> list[int]:
    """Circuit sizes of a curve, 0 and `total` included. Default: every size when there are at most 32 heads,
    else MIB's fractions of the model (0.1%, 0.2%, 0.5%, 1%, 2%, 5%, 10%, 20%, 50%, 100%), at least one head."""
    if sizes is None:
        if total <= 32:
            return list(range(total + 1))
        fractions = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
        sizes = [max(1, round(f * total)) for f in fractions]
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s <= total]
    if bad:
        raise InvalidOptionError(f"sizes {bad}; expected numbers of heads in [0, {total}]")
    return sorted({0, total, *(int(s) for s in sizes)})


def cpr(fraction: Numbers, faithfulness: Numbers) -> float:
    """MIB's CPR: the area under the faithfulness curve over the fraction of heads kept (higher is better)."""
    return trapezoid(fraction, faithfulness)


def cmd(fraction: Numbers, faithfulness: Numbers) -> float:
    """MIB's CMD: the area between the curve and 1, i.e. of |1 − faithfulness| (lower is better)."""
    return trapezoid(fraction, np.abs(1.0 - np.asarray(faithfulness, dtype=float)))
