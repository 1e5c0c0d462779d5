"""The CD-T forward pass: (rel, irrel) through every block, with source sets stacked along the batch axis.

Rows are ``set * batch + example``. Up to the first layer that holds a source, rel is exactly zero and
irrel the real activation (every rule maps rel = 0 to rel = 0), so that stretch is computed once on the
batch alone and shared by every set and every chunk of sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from circuits import forward
from circuits.engines.cdt import model as cdt_model
from circuits.engines.cdt.rules import Parts


@dataclass(frozen=True)
class Decomposition:
    """rel and irrel logits ``[set, batch, pos, d_vocab]`` (``[set, batch, d_vocab]`` at read-out positions);
    with `keep_residual`, the residual stream entering each block and, last, entering the final norm
    (``n_layers + 1`` entries ``[set, batch, pos, d_model]``); with `keep_z`, each layer's head outputs z
    after the sources were set (``n_layers`` entries ``[set, batch, pos, head, d_head]``). At read-out
    positions the ``pos`` axis is dropped everywhere."""

    rel: Tensor
    irrel: Tensor
    resid_rel: Optional[list[Tensor]] = None
    resid_irrel: Optional[list[Tensor]] = None
    z_rel: Optional[list[Tensor]] = None
    z_irrel: Optional[list[Tensor]] = None


class Propagation:
    """One model and one batch of inputs; `run` decomposes for any source masks and baseline."""

    def __init__(self, model: Any, inputs: Tensor, readout: Optional[Tensor] = None,
                 dtype: Optional[torch.dtype] = None, real_totals: bool = True):
        cdt_model.check_model(model)
        self.model = model
        # real_totals: take each total (attention output P v, every linear map's output) from the real pass,
        # irrel = total - rel (fast; rel + irrel then equals the real activation by construction). False:
        # both parts go through every rule, as in the reference, and exactness is a property to check.
        self.use_real_totals = real_totals
        embedded = forward.embed(model, inputs)
        embedded = embedded if dtype is None else embedded.to(dtype)
        self.device, self.n_batch, self.n_pos = embedded.device, embedded.shape[0], embedded.shape[1]
        self.readout = None if readout is None else readout.to(self.device)
        # On a model spread over devices each block computes on its weights' device; what is kept and the logits
        # come back to the input device (`self.device`).
        self.layers = [cdt_model.read_layer(model, layer, self.n_pos, dtype) for layer in range(model.cfg.n_layers)]
        self.real_resid = [embedded]  # residual entering each block, computed as far as needed
        self.real_z: list[Tensor] = []
        self.real_totals: list[cdt_model.Totals] = []  # each block's real linear-map outputs
        self.real_unembed: cdt_model.Totals = {}

    def real(self, upto: int) -> None:
        """Real residuals entering blocks ``0..upto`` and real z of blocks ``0..upto-1``."""
        while len(self.real_resid) <= upto:
            layer = self.layers[len(self.real_z)]
            resid = self.real_resid[-1].to(layer.device)
            parts = (torch.zeros_like(resid), resid)
            z = cdt_model.attention_block(layer, parts)
            self.real_z.append(z[1])
            self.real_totals.append({})
            self.real_resid.append(cdt_model.finish_block(layer, parts, z, record=self.real_totals[-1])[1])

    def run(self, masks: Tensor, baseline: Optional[Tensor], keep_residual: bool = False,
            keep_z: bool = False) -> Decomposition:
        """`masks` ``[n_layers, set, pos, head]`` (True: a source), or ``[n_layers, set, batch, pos, head]`` for
        sources that differ from prompt to prompt; `baseline` None or ``[batch, n_layers, pos, head, d_head]``."""
        n_layers, n_sets = masks.shape[0], masks.shape[1]
        has_source = masks.flatten(1).any(1)
        start = int(has_source.nonzero()[0]) if has_source.any() else n_layers
        self.real(n_layers)  # real z of every layer: the total attention output of every set
        tile = lambda t: t.repeat(n_sets, *([1] * (t.ndim - 1)))  # noqa: E731  [batch, ...] -> [set*batch, ...]
        resid = tile(self.real_resid[start])
        parts: Parts = (torch.zeros_like(resid), resid)
        kept_resid: list[Parts] = [self._zero(self.real_resid[l], n_sets) for l in range(start)]
        kept_z: list[Parts] = [self._zero(self.real_z[l], n_sets) for l in range(start)]
        for index in range(start, n_layers):
            if keep_residual:
                kept_resid.append(parts)
            layer = self.layers[index]
            parts = cdt_model.on_device(parts, layer.device)
            z = cdt_model.attention_block(layer, parts, tile(self.real_z[index]) if self.use_real_totals else None)
            if has_source[index]:
                z = self._set_sources(z, masks[index].to(layer.device),
                                      None if baseline is None else tile(baseline[:, index].to(layer.device)))
            if keep_z:
                kept_z.append(z)
            totals = {name: tile(t) for name, t in self.real_totals[index].items()} if self.use_real_totals else None
            parts = cdt_model.finish_block(layer, parts, z, totals)
        if keep_residual:
            kept_resid.append(parts)
        if not self.real_unembed:
            final = self._at_readout(self.real_resid[n_layers], 1)
            cdt_model.unembed(self.model, (torch.zeros_like(final), final), record=self.real_unembed)
        logits = cdt_model.unembed(self.model, tuple(self._at_readout(t, n_sets) for t in parts),
                                   {name: tile(t) for name, t in self.real_unembed.items()} if self.use_real_totals else None)
        logits = cdt_model.on_device(logits, self.device)
        unstack = lambda t: t.view(n_sets, self.n_batch, *t.shape[1:])  # noqa: E731
        split = lambda kept, i: [unstack(self._at_readout(p[i].to(self.device), n_sets)) for p in kept]  # noqa: E731
        return Decomposition(
            rel=unstack(logits[0]), irrel=unstack(logits[1]),
            resid_rel=split(kept_resid, 0) if keep_residual else None,
            resid_irrel=split(kept_resid, 1) if keep_residual else None,
            z_rel=split(kept_z, 0) if keep_z else None, z_irrel=split(kept_z, 1) if keep_z else None)

    def _zero(self, real: Tensor, n_sets: int) -> Parts:
        irrel = real.repeat(n_sets, *([1] * (real.ndim - 1)))
        return torch.zeros_like(irrel), irrel

    def _at_readout(self, t: Tensor, n_sets: int) -> Tensor:
        if self.readout is None:
            return t
        rows = torch.arange(t.shape[0], device=t.device)
        return t[rows, self.readout.repeat(n_sets).to(t.device)]

    def _set_sources(self, z: Parts, mask: Tensor, baseline: Optional[Tensor]) -> Parts:
        """Sources' z become rel (whole z, or z - baseline with irrel = baseline)."""
        per_set = mask.flatten(0, 1) if mask.ndim == 4 else mask.repeat_interleave(self.n_batch, dim=0)
        rows = per_set[..., None]  # [set*batch, pos, head, 1]
        total = z[0] + z[1]
        if baseline is None:
            return torch.where(rows, total, z[0]), torch.where(rows, torch.zeros_like(total), z[1])
        return torch.where(rows, total - baseline, z[0]), torch.where(rows, baseline, z[1])
