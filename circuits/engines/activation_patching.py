"""Activation patching of attention heads (``hook_z``), batched and restarted at the patched layer.

Denoising (default): run the corrupted prompts with one head's output set to its clean value. Noising:
the reverse. Each patched run starts at the patched layer from the cached residual stream plus the head's
change through W_O, so layers below it are never recomputed; copies of the batch that patch different
heads are stacked into one forward pass (chunked to `memory_mb`), and only read-out positions are
unembedded. Scores follow `circuits.patching.Baseline.score`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from circuits import forward, hooks, patching
from circuits.errors import IncompatibleModelError
from circuits.graph import HeadGraph
from circuits.meta import graph_meta
from circuits.state import preserved
from circuits.task import PromptBatch


@dataclass(frozen=True)
class ActivationPatching:
    direction: str = "denoising"  # or "noising"; checked in __post_init__ (typed error)
    per_position: bool = False  # also score each head at each position (node attribute "position_scores")
    memory_mb: float = 256.0  # budget for one stacked forward pass

    name = "activation_patching"

    def __post_init__(self) -> None:
        patching.check_direction(self.direction)

    def run(self, model: Any, task: Any, n: int = 32, seed: int = 0) -> HeadGraph:
        with preserved(model), torch.no_grad():
            model.eval()
            batch = task.batch(model, n=n, seed=seed)
            batch.validate(model)
            runs = _Runs.prepare(model, task, batch, self.direction)
            baseline = runs.baseline()  # fails fast when the score is undefined
            patched, per_position = self._patch_heads(runs)
            extras = {} if per_position is None else {"position_scores": baseline.score(per_position, self.direction)}
            meta = graph_meta(self, task, model, n=n, seed=seed, options=asdict(self),
                              metric_clean=baseline.clean, metric_corrupted=baseline.corrupted)
            return HeadGraph.from_scores(baseline.score(patched, self.direction), meta=meta, **extras)

    def patched_metrics(self, model: Any, task: Any, batch: PromptBatch) -> tuple[Tensor, Optional[Tensor]]:
        """Unnormalised patched metric means ``[n_layers, n_heads]`` (and ``[n_layers, n_heads, pos]``
        when per position), for a batch you built yourself."""
        with preserved(model), torch.no_grad():
            model.eval()
            return self._patch_heads(_Runs.prepare(model, task, batch, self.direction))

    def _patch_heads(self, runs: "_Runs") -> tuple[Tensor, Optional[Tensor]]:
        model = runs.model
        cfg = model.cfg
        n_pos = runs.batch.clean.shape[1]
        per_copy = patching.copies_per_pass(model, runs.batch, self.memory_mb)
        heads = torch.zeros(cfg.n_layers, cfg.n_heads)
        positions = torch.zeros(cfg.n_layers, cfg.n_heads, n_pos) if self.per_position else None
        for layer in range(cfg.n_layers):
            delta = runs.head_deltas(layer)  # [head, batch, pos, d_model]
            for chunk in patching.chunks(cfg.n_heads, per_copy):
                heads[layer, chunk.start:chunk.stop] = runs.finish(layer, delta[chunk.start:chunk.stop])
            if positions is not None:
                pairs = [(h, p) for h in range(cfg.n_heads) for p in range(n_pos)]
                for chunk in patching.chunks(len(pairs), per_copy):
                    picked = [pairs[i] for i in chunk]
                    at_position = torch.zeros((len(picked),) + delta.shape[1:], dtype=delta.dtype, device=delta.device)
                    for i, (h, p) in enumerate(picked):
                        at_position[i, :, p] = delta[h, :, p]
                    values = runs.finish(layer, at_position)
                    for i, (h, p) in enumerate(picked):
                        positions[layer, h, p] = values[i]
        return heads, positions


@dataclass
class _Runs:
    """Cached base and source runs, and how to finish a patched run from the patched layer."""

    model: Any
    task: Any
    batch: PromptBatch  # trimmed to the positions the read-out needs
    base_resid: list[Tensor]  # residual entering each block, base run
    base_attn_out: list[Tensor]  # attention output of each block, base run
    z_change: list[Tensor]  # source z - base z per block, [batch, pos, head, d_head]
    clean_metric: float
    corrupted_metric: float

    def baseline(self) -> patching.Baseline:
        return patching.Baseline(clean=self.clean_metric, corrupted=self.corrupted_metric)

    @classmethod
    def prepare(cls, model: Any, task: Any, batch: PromptBatch, direction: str) -> "_Runs":
        if getattr(model.cfg, "parallel_attn_mlp", False):
            raise IncompatibleModelError("activation patching restarts at the patched layer, which assumes "
                                         "sequential attention then MLP; this model runs them in parallel")
        batch = patching.trimmed(batch, causal=model.cfg.attention_dir == "causal")
        base, source = (batch.corrupted, batch.clean) if direction == "denoising" else (batch.clean, batch.corrupted)
        layers = range(model.cfg.n_layers)
        z_names = [hooks.z(model, layer) for layer in layers]
        resid_names = [hooks.resid_pre(model, layer) for layer in layers]
        attn_names = [hooks.attn_out(model, layer) for layer in layers]
        base_logits, base_cache = patching.run_with_cache(model, base, z_names + resid_names + attn_names,
                                                          batch.position)
        source_logits, source_cache = patching.run_with_cache(model, source, z_names, batch.position)
        base_metric = patching.metric_mean(task, base_logits, batch).item()
        source_metric = patching.metric_mean(task, source_logits, batch).item()
        clean, corrupted = (source_metric, base_metric) if direction == "denoising" else (base_metric, source_metric)
        return cls(model, task, batch,
                   base_resid=[base_cache[name] for name in resid_names],
                   base_attn_out=[base_cache[name] for name in attn_names],
                   z_change=[source_cache[name] - base_cache[name] for name in z_names],
                   clean_metric=clean, corrupted_metric=corrupted)

    def head_deltas(self, layer: int) -> Float[Tensor, "head batch pos d_model"]:
        """Each head's change to the residual stream: (z_source - z_base) through its W_O."""
        w_o = self.model.W_O[layer].to(self.z_change[layer].device)
        return einops.einsum(self.z_change[layer], w_o, "batch pos head d_head, head d_head d_model -> head batch pos d_model")

    def finish(self, layer: int, deltas: Float[Tensor, "copies batch pos d_model"]) -> Tensor:
        """Metric means of the base run with each copy's delta added after block `layer`'s attention."""
        copies = deltas.shape[0]
        mid = self.base_resid[layer] + self.base_attn_out[layer]
        residual = einops.rearrange(mid[None] + deltas.to(mid.device), "copies batch pos d -> (copies batch) pos d")
        residual = _finish_block(self.model, layer, residual)
        position = self.batch.position.repeat(copies)
        logits = forward.run_from(self.model, residual, layer + 1, position)
        return patching.copies_metric(self.task, logits, self.batch, copies)


def _finish_block(model: Any, layer: int, resid_mid: Tensor) -> Tensor:
    """The rest of block `layer` after its attention: its MLP, if the model has one."""
    if model.cfg.attn_only:
        return resid_mid
    block = model.blocks[layer]
    return resid_mid + block.mlp(block.ln2(resid_mid))
