"""Activation patching of attention heads (``hook_z``), batched and restarted at the patched layer.

Denoising (default): run the corrupted prompts with one head's output set to its clean value. Noising:
the reverse. Each patched run starts at the patched layer from the cached residual stream plus the head's
change through W_O, so layers below it are not run again; copies of the batch that patch different
heads are stacked into one forward pass (chunked to `memory_mb`), and only read-out positions are
unembedded. Scores follow `circuits.engines.kit.Baseline.score`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from circuits.engines import kit
from circuits.engines.kit import PatchRuns
from circuits._task import PromptBatch
from circuits.engines import base
from circuits.graph import HeadGraph


@dataclass(frozen=True)
class ActivationPatching:
    direction: str = "denoising"  # or "noising"; checked in __post_init__ (typed error)
    per_position: bool = False  # also score each head at each position (node attribute "position_scores")
    memory_mb: float = 256.0  # budget for one stacked forward pass

    name = "activation_patching"

    def __post_init__(self) -> None:
        kit.check_direction(self.direction)
        kit.check_memory(self.memory_mb)

    @property
    def score_meaning(self) -> str:
        return (f"node and head->logits edge: the head's total effect on the metric when patched ({self.direction}), "
                "normalised by m_clean - m_corrupted")

    def run(self, model: Any, task: Any, n: int = 32, seed: int = 0) -> HeadGraph:
        with base.patch_runs(model, task, self.direction, n=n, seed=seed) as runs:
            baseline = runs.baseline()
            patched, per_position = self._patch_heads(runs)
            extras = {} if per_position is None else {"position_scores": baseline.score(per_position, self.direction)}
            meta = base.graph_meta(self, model, task, n=n, seed=seed, score=self.score_meaning, baseline=baseline)
            return HeadGraph.from_scores(baseline.score(patched, self.direction), meta=meta, **extras)

    def patched_metrics(self, model: Any, task: Any, batch: PromptBatch) -> tuple[Tensor, Optional[Tensor]]:
        """Unnormalised patched metric means ``[n_layers, n_heads]`` (and ``[n_layers, n_heads, pos]``
        when per position), for a batch you built yourself."""
        with base.patch_runs(model, task, self.direction, batch=batch) as runs:
            return self._patch_heads(runs)

    def _patch_heads(self, runs: PatchRuns) -> tuple[Tensor, Optional[Tensor]]:
        cfg = runs.model.cfg
        n_pos = runs.batch.clean.shape[1]
        per_copy = kit.copies_per_pass(runs.model, runs.batch, self.memory_mb)
        heads = torch.zeros(cfg.n_layers, cfg.n_heads)
        positions = torch.zeros(cfg.n_layers, cfg.n_heads, n_pos) if self.per_position else None
        for layer in range(cfg.n_layers):
            delta = runs.head_deltas(layer)  # [head, batch, pos, d_model]
            for chunk in kit.chunks(cfg.n_heads, per_copy):
                heads[layer, chunk.start:chunk.stop] = runs.finish(layer, delta[chunk.start:chunk.stop])
            if positions is not None:
                pairs = [(h, p) for h in range(cfg.n_heads) for p in range(n_pos)]
                for chunk in kit.chunks(len(pairs), per_copy):
                    picked = [pairs[i] for i in chunk]
                    at_position = torch.zeros((len(picked),) + delta.shape[1:], dtype=delta.dtype, device=delta.device)
                    for i, (h, p) in enumerate(picked):
                        at_position[i, :, p] = delta[h, :, p]
                    values = runs.finish(layer, at_position)
                    for i, (h, p) in enumerate(picked):
                        positions[layer, h, p] = values[i]
        return heads, positions
