"""Pieces every patching engine shares: cached runs, metric means, the normalised score, chunking."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Optional

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from circuits import forward, hooks
from circuits.errors import (HookNotFiredError, IncompatibleModelError, InvalidOptionError, MetricError,
                             UndefinedScoreError)
from circuits._task import PromptBatch

Direction = Literal["denoising", "noising"]
DIRECTIONS = ("denoising", "noising")


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InvalidOptionError(f"direction={direction!r}; expected one of {DIRECTIONS}")


def check_memory(memory_mb: float) -> None:
    if not memory_mb > 0:
        raise InvalidOptionError(f"memory_mb={memory_mb!r}; expected a positive number of megabytes")


def trimmed(batch: PromptBatch, causal: bool) -> PromptBatch:
    """In a causal model nothing after the last read-out position can change the result: drop it."""
    keep = int(batch.position.max().item()) + 1 if causal else batch.clean.shape[1]
    return replace(batch, clean=batch.clean[:, :keep], corrupted=batch.corrupted[:, :keep])


def metric_mean(task: Any, logits: Tensor, batch: PromptBatch) -> Tensor:
    """The batch mean of the task's metric, checked for shape and NaN."""
    return copies_metric(task, logits, batch, 1)[0]


def copies_metric(task: Any, logits: Tensor, batch: PromptBatch, copies: int) -> Tensor:
    """Metric means of `copies` stacked copies of `batch`: logits ``[copies * batch, vocab]`` -> ``[copies]``.
    One call of the task's metric on the repeated batch, checked for shape and NaN."""
    stacked = batch if copies == 1 else batch.repeated(copies)
    values = task.metric(logits, stacked)
    if values.shape != (stacked.size,):
        raise MetricError(f"{task.name}.metric returned shape {tuple(values.shape)}; expected ({stacked.size},)")
    means = values.float().reshape(copies, batch.size).mean(1)
    if not torch.isfinite(means).all():
        raise MetricError(f"{task.name}.metric returned a non-finite value ({means.tolist()}) on this batch")
    return means


@dataclass(frozen=True)
class Baseline:
    """Metric means on the clean and corrupted prompts; the denominator of every normalised score."""

    clean: float
    corrupted: float

    def __post_init__(self) -> None:
        if abs(self.clean - self.corrupted) <= 1e-6 * max(1.0, abs(self.clean), abs(self.corrupted)):
            raise UndefinedScoreError(
                f"the metric is {self.clean:.6g} on clean and {self.corrupted:.6g} on corrupted prompts; "
                "with no gap the normalised score (m_patched - m_corrupted) / (m_clean - m_corrupted) is undefined")

    def score(self, patched: Tensor, direction: Direction) -> Tensor:
        """Denoising: (m_patched - m_corrupted) / gap; noising: (m_clean - m_patched) / gap.
        Both are 1 when the patch carries the whole behaviour and 0 when it carries none."""
        gap = self.clean - self.corrupted
        if direction == "denoising":
            return (patched - self.corrupted) / gap
        return (self.clean - patched) / gap


def read_out_and_cache(model: Any, inputs: Tensor, names: list[str],
                       position: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Read-out logits and the activations at `names` (detached). (Not TransformerLens's
    `run_with_cache`, which silently ignores hooks passed to it and returns full-sequence logits.)"""
    cache: dict[str, Tensor] = {}
    # hook.name is the canonical name, which can differ from an alias we asked for: key by request.
    fwd = [(name, (lambda tensor, hook, name=name: cache.__setitem__(name, tensor.detach()))) for name in names]
    with hooks.attached(model, fwd):
        out = forward.logits(model, inputs, position)
    return out, cache


def chunks(total: int, size: int) -> list[range]:
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def copies_per_pass(model: Any, batch: PromptBatch, memory_mb: float) -> int:
    """How many stacked copies of the batch fit the memory budget (a rough per-copy activation size)."""
    cfg = model.cfg
    n_pos = batch.clean.shape[1]
    d_mlp = 0 if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
    floats = batch.size * n_pos * (6 * cfg.d_model + 3 * cfg.n_heads * n_pos + 2 * d_mlp)
    return max(1, int(memory_mb * 2**20 // (4 * floats)))


@dataclass
class PatchRuns:
    """Cached base and source runs, and how to finish a patched run from the patched layer."""

    model: Any
    task: Any
    batch: PromptBatch  # trimmed to the positions the read-out needs
    n_positions: int  # the prompts' length before trimming
    base_resid: list[Tensor]  # residual entering each block, base run
    base_attn_out: list[Tensor]  # attention output of each block, base run
    z_change: list[Tensor]  # source z - base z per block, [batch, pos, head, d_head]
    clean_metric: float
    corrupted_metric: float

    def baseline(self) -> Baseline:
        return Baseline(clean=self.clean_metric, corrupted=self.corrupted_metric)

    @classmethod
    def prepare(cls, model: Any, task: Any, batch: PromptBatch, direction: str) -> "PatchRuns":
        if getattr(model.cfg, "parallel_attn_mlp", False):
            raise IncompatibleModelError("activation patching restarts at the patched layer, which assumes "
                                         "sequential attention then MLP; this model runs them in parallel")
        n_positions = batch.clean.shape[1]
        batch = trimmed(batch, causal=model.cfg.attention_dir == "causal")
        base, source = (batch.corrupted, batch.clean) if direction == "denoising" else (batch.clean, batch.corrupted)
        layers = range(model.cfg.n_layers)
        z_names = [hooks.site(model, layer, "z") for layer in layers]
        resid_names = [hooks.site(model, layer, "resid_pre") for layer in layers]
        attn_names = [hooks.site(model, layer, "attn_out") for layer in layers]
        # One forward pass over base and source stacked: half the per-call overhead of two passes.
        logits, cache = read_out_and_cache(model, torch.cat([base, source]), z_names + resid_names + attn_names,
                                       batch.position.repeat(2))
        base_metric, source_metric = copies_metric(task, logits, batch, 2).tolist()
        n = batch.size
        clean, corrupted = (source_metric, base_metric) if direction == "denoising" else (base_metric, source_metric)
        # On a model spread over devices, a block's input may be captured before the block moves it to its own
        # device: keep each layer's activations together, where its attention computed.
        return cls(model, task, batch, n_positions,
                   base_resid=[cache[r][:n].to(cache[a].device) for r, a in zip(resid_names, attn_names)],
                   base_attn_out=[cache[name][:n] for name in attn_names],
                   z_change=[cache[name][n:] - cache[name][:n] for name in z_names],
                   clean_metric=clean, corrupted_metric=corrupted)

    def head_deltas(self, layer: int) -> Float[Tensor, "head batch pos d_model"]:
        """Each head's change to the residual stream: (z_source - z_base) through its W_O."""
        w_o = output_weights(self.model, layer).to(self.z_change[layer].device)
        return einops.einsum(self.z_change[layer], w_o, "batch pos head d_head, head d_head d_model -> head batch pos d_model")

    def finish(self, layer: int, deltas: Float[Tensor, "copies batch pos d_model"]) -> Tensor:
        """Metric means of the base run with each copy's delta added after block `layer`'s attention."""
        copies = deltas.shape[0]
        mid = self.base_resid[layer] + self.base_attn_out[layer]
        residual = einops.rearrange(mid[None] + deltas.to(mid.device), "copies batch pos d -> (copies batch) pos d")
        residual = finish_block(self.model, layer, residual)
        position = self.batch.position.repeat(copies)
        logits = forward.run_from(self.model, residual, layer + 1, position)
        return copies_metric(self.task, logits, self.batch, copies)


def output_weights(model: Any, layer: int) -> Float[Tensor, "head d_head d_model"]:
    """W_O of one layer, also when offloaded. (``model.W_O`` stacks every layer on each access: 0.17 s on SmolLM2.)"""
    attn = model.blocks[layer].attn
    with forward.readable_weights(attn):
        return attn.W_O


def finish_block(model: Any, layer: int, resid_mid: Tensor) -> Tensor:
    """The rest of block `layer` after its attention: its MLP, if the model has one."""
    if model.cfg.attn_only:
        return resid_mid
    block = model.blocks[layer]
    return resid_mid + block.mlp(block.ln2(resid_mid))


class _Captured(Exception):
    """Raised by the last capture hook: the rest of the block is not needed."""


def block_activations(model: Any, residual: Tensor, layer: int, capture: list[str],
                      replace: Optional[dict[str, Tensor]] = None) -> dict[str, Tensor]:
    """Run block `layer` on `residual`, replacing the activations in `replace` and returning those in
    `capture`; the run stops as soon as everything is captured (no attention for q/k/v, no MLP)."""
    cache: dict[str, Tensor] = {}

    def replacing(name: str):
        return lambda tensor, hook: replace[name].to(tensor.device, tensor.dtype)

    def storing(name: str):
        def hook(tensor: Tensor, hook: Any) -> None:
            cache[name] = tensor.detach()
            if len(cache) == len(capture):
                raise _Captured

        return hook

    fwd = [(name, replacing(name)) for name in (replace or {})] + [(name, storing(name)) for name in capture]
    try:
        with hooks.attached(model, fwd):
            forward.run_blocks(model, residual, layer, layer + 1)
    except _Captured:
        pass
    if len(cache) != len(capture):
        raise HookNotFiredError(f"block {layer} never reached {sorted(set(capture) - set(cache))}")
    return cache
