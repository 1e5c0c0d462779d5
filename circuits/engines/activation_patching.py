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

import torch
from torch import Tensor

from circuits import patching
from circuits.graph import HeadGraph
from circuits.meta import graph_meta
from circuits.patching import PatchRuns
from circuits.state import evaluation_mode, preserved
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
            evaluation_mode(model)
            batch = task.batch(model, n=n, seed=seed)
            batch.validate(model)
            runs = PatchRuns.prepare(model, task, batch, self.direction)
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
            evaluation_mode(model)
            return self._patch_heads(PatchRuns.prepare(model, task, batch, self.direction))

    def _patch_heads(self, runs: PatchRuns) -> tuple[Tensor, Optional[Tensor]]:
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
