"""Activation patching of attention heads (``hook_z``), batched and restarted at the patched layer.

Denoising (default): run the corrupted prompts with one head's output set to its clean value. Noising:
the reverse. Each patched run starts at the patched layer from the cached residual stream plus the head's
change through W_O, so layers below it are not run again; copies of the batch that patch different
heads are stacked into one forward pass (chunked to `memory_mb`), and only read-out positions are
unembedded. When every layer's copies fit the budget, the whole measurement is one pass (`fused_head_patches`):
base and source prompts run stacked, and each layer's patched copies join the stack after that layer's attention.
Scores: `kit.Baseline.normalise` of the patched metric's change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Union

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from circuits import forward, hooks
from circuits._task import PromptBatch
from circuits.engines import base, kit
from circuits.engines.kit import Measurement, PatchRuns
from circuits.graph import LOGITS, HeadGraph
from circuits.nodes import all_heads
from circuits.positions import check_kind, graph_record, label_masks


class HeadPatches(NamedTuple):
    """Patched metric means (unnormalised), per head and, with ``per_position``, per head and position."""

    heads: Float[Tensor, "n_layers n_heads"]
    positions: Optional[Float[Tensor, "n_layers n_heads pos"]] = None


class LabelledHeadPatches(NamedTuple):
    """`HeadPatches` with, for the ``positions`` option, each head patched at one label's tokens alone."""

    heads: Float[Tensor, "n_layers n_heads"]
    positions: Optional[Float[Tensor, "n_layers n_heads pos"]]
    at: Float[Tensor, "n_layers n_heads label"]
    labels: tuple[str, ...]


@base.options()
@dataclass(frozen=True)
class ActivationPatching(base.EngineBase):
    direction: str = "denoising"  # or "noising"; checked in __post_init__ (typed error)
    per_position: bool = False  # also score each head at each position (node attribute "position_scores")
    positions: Optional[str] = None  # "tokens" or "spans": also each head at each token (span) alone, per prompt
    memory_mb: float = 256.0  # budget for one stacked forward pass
    progress: bool = True  # a progress bar over layers on large models (kit.progress); not in results

    name = "activation_patching"

    def __post_init__(self) -> None:
        kit.check_direction(self.direction)
        kit.check_memory(self.memory_mb)
        check_kind(self.positions)

    @property
    def score_meaning(self) -> str:
        return (f"node and head->logits edge (effect 'total'): the head's total effect on the metric when patched "
                f"({self.direction}), normalised by m_clean - m_corrupted")

    def measure(self, model: Any, task: Any, batch: PromptBatch) -> Measurement[HeadPatches]:
        """Patched metric means `HeadPatches` for a batch you built yourself."""
        with base.session(model):
            ready = kit.on_model(model, batch)
            cfg = model.cfg
            copies = cfg.n_layers * cfg.n_heads + 2  # every head's copy plus the base and source rows
            alone = not self.per_position and self.positions is None
            if alone and copies <= kit.copies_per_pass(model, ready, self.memory_mb):
                return fused_head_patches(model, task, ready, self.direction)
            runs = PatchRuns.prepare(model, task, batch, self.direction)
            return runs.measured(self._patch_heads(runs))

    def graph(self, model: Any, measurement: Measurement[HeadPatches]) -> HeadGraph:
        baseline, patched = measurement.baseline(), measurement.values
        graph = HeadGraph(n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads)
        heads = baseline.score(patched.heads, self.direction)
        positions = None if patched.positions is None else baseline.score(patched.positions, self.direction)
        at = baseline.score(patched.at, self.direction) if isinstance(patched, LabelledHeadPatches) else None
        for head in all_heads(model):
            extras = {} if positions is None else {"position_scores": positions[head.layer, head.head].tolist()}
            score = float(heads[head.layer, head.head])
            graph.add_node(head, score, **extras)
            labelled_values = {} if at is None else {
                "positions": dict(zip(patched.labels, at[head.layer, head.head].tolist()))}
            graph.add_edge(head, LOGITS, score, effect="total", **labelled_values)
        if at is not None:
            graph.meta["positions"] = graph_record(
                self.positions, patched.labels, "where the head's effects at different positions interact (patching "
                                                "is not linear); score is the head patched everywhere")
        return graph

    def _patch_heads(self, runs: PatchRuns) -> Union[HeadPatches, LabelledHeadPatches]:
        cfg = runs.model.cfg
        n_pos = runs.batch.clean.shape[1]
        per_copy = kit.copies_per_pass(runs.model, runs.batch, self.memory_mb)
        heads = torch.zeros(cfg.n_layers, cfg.n_heads)
        positions = torch.zeros(cfg.n_layers, cfg.n_heads, n_pos) if self.per_position else None
        masks, labels = label_masks(runs.batch, self.positions, runs.task) if self.positions else (None, ())
        at = torch.zeros(cfg.n_layers, cfg.n_heads, len(labels))
        bar = kit.progress(runs.model, cfg.n_layers, f"{self.name}: layers", self.progress)
        for layer in range(cfg.n_layers):
            bar.update(1)
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
            if labels:  # each head at one label's tokens of each prompt alone
                pairs = [(h, label) for h in range(cfg.n_heads) for label in range(len(labels))]
                for chunk in kit.chunks(len(pairs), per_copy):
                    picked = [pairs[i] for i in chunk]
                    masked = torch.stack([delta[h] * masks[label].to(delta)[..., None] for h, label in picked])
                    values = runs.finish(layer, masked)
                    for i, (h, label) in enumerate(picked):
                        at[layer, h, label] = values[i]
        bar.close()
        return LabelledHeadPatches(heads, positions, at, tuple(labels)) if labels else HeadPatches(heads, positions)


def fused_head_patches(model: Any, task: Any, batch: PromptBatch, direction: str) -> Measurement[HeadPatches]:
    """Every head's patch in one pass, for a `batch` made ready (`kit.on_model`). Base and source prompts run
    stacked, block by block; after block l, each of its heads' patched copy (the base run's residual after the
    attention, plus that head's change through W_O, then the block's MLP) joins the stack and runs the later
    blocks with them; one unembedding and one metric call at the end. The same blocks are computed as by the
    caching pass plus a patched pass per layer; the calls are a third or fewer (the overhead-bound case)."""
    kit.check_direction(direction)
    kit.check_sequential(model)
    cfg, n = model.cfg, batch.size
    base_in, source_in = (batch.corrupted, batch.clean) if direction == "denoising" else (batch.clean, batch.corrupted)
    captured: dict[tuple[int, str], Tensor] = {}

    def keep(layer: int, kind: str):  # only the base and source rows: the copies' values are not needed
        return lambda tensor, hook: captured.__setitem__((layer, kind), tensor[: 2 * n].detach())

    fwd = [(hooks.site(model, layer, kind), keep(layer, kind))
           for layer in range(cfg.n_layers) for kind in ("z", "attn_out")]
    with hooks.attached(model, fwd):
        residual = forward.embed(model, torch.cat([base_in, source_in]))
        copies: Optional[Tensor] = None
        for layer in range(cfg.n_layers):
            rows = residual if copies is None else torch.cat([residual, copies.to(residual.device)])
            out = forward.run_blocks(model, rows, layer, layer + 1)
            z, attn_out = captured[layer, "z"], captured[layer, "attn_out"]
            mid = residual[:n].to(attn_out.device) + attn_out[:n]
            w_o = kit.output_weights(model, layer).to(z.device)
            delta = einops.einsum(z[n:] - z[:n], w_o,
                                  "batch pos head d_head, head d_head d_model -> head batch pos d_model")
            joining = einops.rearrange(mid[None] + delta.to(mid.device), "head batch pos d -> (head batch) pos d")
            joining = kit.finish_block(model, layer, joining)
            residual = out[: 2 * n]
            copies = joining if copies is None else torch.cat([out[2 * n:], joining.to(out.device)])
        stacked = 2 + cfg.n_layers * cfg.n_heads
        everything = torch.cat([residual, copies.to(residual.device)])
        logits = forward.unembed(model, everything, batch.position.repeat(stacked))
    means = kit.metric_means(task, logits, batch, stacked)
    base_metric, source_metric = float(means[0]), float(means[1])
    clean, corrupted = (source_metric, base_metric) if direction == "denoising" else (base_metric, source_metric)
    if kit.gap_is_required():
        kit.Baseline(clean=clean, corrupted=corrupted)  # UndefinedScoreError, as `kit.Runs.prepare` raises it
    heads = means[2:].view(cfg.n_layers, cfg.n_heads).cpu()
    return Measurement(clean, corrupted, HeadPatches(heads), batch)
