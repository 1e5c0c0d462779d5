"""Path patching (Wang et al. 2022; Goldowsky-Dill et al. 2023): sender head -> receiver q/k/v input or logits.

Exact algorithm, batched (see docs/path_patching.md). Denoising (default): the base run is corrupted and
the sender gets its clean output; noising swaps the roles.

Step 3 (every head frozen at its base output except the sender, MLPs recomputed unless `freeze_mlps`)
needs no attention at all: with every head frozen, the residual entering layer L is the base residual
plus the sender's change through W_O, carried through the recomputed MLPs. It is kept as one stacked
tensor ``[sender, batch, pos, d_model]`` advanced layer by layer, and serves every receiver of every sender.

Step 4 (only the receiver's q/k/v input replaced by its step-3 value): the receiver's q/k/v are computed
from the step-3 residual by running block L on it and capturing ``hook_q``/``hook_k``/``hook_v``
(the per-head projections; q/k/v depend on the residual position by position, so this *is* replacing the
input; TL4's ``hook_q_input`` points are gated behind ``use_split_qkv_input`` and are not used). Heads do
not interact within a layer, so one run of block L with *every* head's q (or k, v) replaced gives each
receiver's patched output at once; only receiver h's change ``(z_h' - z_h) @ W_O[L, h]`` is then added to
the base residual and the model finished from layer L, many (sender, receiver) copies per stacked pass.

Grouped-query attention: a receiver is a query head. Its k/v input is replaced only as *that query head*
sees it (its copy of the shared KV head); the other query heads of its group keep their base k/v, so
each edge measures one query head. (Replacing hook_k for the whole group in the shared block run is
harmless: only head h's output change is kept.)
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Optional, Union

import einops
import torch
from torch import Tensor

from circuits import forward, hooks
from circuits._task import PromptBatch
from circuits.engines import base, kit
from circuits.engines.kit import Measurement, PatchRuns, block_activations
from circuits.errors import InvalidOptionError
from circuits.graph import HeadGraph
from circuits.nodes import INPUTS, LOGITS, Head, all_heads

# (sender, receiver) -> {input combination ("q", "k", "v", "q+k+v"; "" for the logits): patched metric mean}
PathPatches = dict[tuple[str, str], dict[str, float]]


@base.options()
@dataclass(frozen=True)
class PathPatching(base.EngineBase):
    direction: str = "denoising"  # or "noising"
    # Sequences (or one name) are accepted and stored as tuples.
    receivers: Union[str, Sequence[str], None] = None  # head names and/or "logits"; None: every head and "logits"
    senders: Union[str, Sequence[str], None] = None  # head names; None: every head
    inputs: Union[str, Sequence[str]] = INPUTS  # receiver inputs patched together (edge score); each also alone
    per_input: bool = True  # also score each input alone (edge attributes "score_q", "score_k", "score_v")
    positions: Optional[Sequence[int]] = None  # sender patched only at these positions; None: all
    freeze_mlps: bool = False  # step 3: MLPs frozen at their base values instead of recomputed
    memory_mb: float = 256.0  # budget for one stacked forward pass
    progress: bool = True  # a progress bar over layers on large models (kit.progress); not in results

    name = "path_patching"

    def __post_init__(self) -> None:
        for field in ("receivers", "senders", "inputs", "positions"):
            value = getattr(self, field)
            if isinstance(value, str):
                value = (value,)
            if value is not None:
                object.__setattr__(self, field, tuple(value))
        kit.check_direction(self.direction)
        bad = [i for i in self.inputs if i not in INPUTS]
        if bad or not self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise InvalidOptionError(f"inputs={self.inputs!r} (bad: {bad!r}); expected a non-empty selection "
                                     f"without repeats from {INPUTS}")
        if self.positions is not None and any(not isinstance(p, int) or p < 0 for p in self.positions):
            raise InvalidOptionError(f"positions={self.positions!r}; expected non-negative integer positions")
        kit.check_memory(self.memory_mb)

    @property
    def score_meaning(self) -> str:
        return (f"edge sender->receiver (effect 'direct'): the metric change when only that path is patched ({self.direction}; "
                "receiver = a head's q/k/v inputs together, per input in score_q/score_k/score_v, or the logits); "
                "node: the head's direct effect on the logits (absent when head->logits was not measured); "
                "all normalised by m_clean - m_corrupted")

    def check(self, model: Any) -> None:
        self.plan(model)  # bad names fail before any model work

    def measure(self, model: Any, task: Any, batch: PromptBatch) -> Measurement[PathPatches]:
        """Patched metric means per edge (`PathPatches`), for a batch you built yourself."""
        senders, receivers, to_logits = self.plan(model)
        with base.session(model):
            runs = PatchRuns.prepare(model, task, batch, self.direction)
            return runs.measured(self._edges(runs, senders, receivers, to_logits))

    def plan(self, model: Any) -> tuple[list[Head], list[Head], bool]:
        """Senders, receiver heads (sorted) and whether the logits are a receiver; typed errors on bad names."""
        every = all_heads(model)
        also = (f"{LOGITS!r} (receivers only)",)
        senders = every if self.senders is None else sorted({Head.in_model(model, s, also) for s in self.senders})
        first = min(s.layer for s in senders)
        if self.receivers is None:
            return senders, [r for r in every if r.layer > first], True
        to_logits = LOGITS in self.receivers
        receivers = sorted({Head.in_model(model, r, also) for r in self.receivers if r != LOGITS})
        for receiver in receivers:
            if receiver.layer <= first:
                raise InvalidOptionError(
                    f"receiver {receiver.name!r} is not later than any of its senders "
                    f"({', '.join(s.name for s in senders[:8])}{'...' if len(senders) > 8 else ''}); "
                    f"expected a receiver in a layer after a sender's, or {LOGITS!r}")
        return senders, receivers, to_logits

    # --- the computation ------------------------------------------------------------------------------
    def _combos(self) -> list[tuple[str, ...]]:
        single = [(i,) for i in self.inputs] if self.per_input and len(self.inputs) > 1 else []
        return single + [tuple(self.inputs)]

    def _edges(self, runs: PatchRuns, senders: list[Head], receivers: list[Head],
               to_logits: bool) -> dict[tuple[str, str], dict[str, float]]:
        model, batch = runs.model, runs.batch
        mask = self._position_mask(batch.n_positions, batch.clean.shape[1], runs.base_resid[0])
        per_copy = kit.copies_per_pass(model, batch, self.memory_mb)
        edges: dict[tuple[str, str], dict[str, float]] = {}
        state = runs.base_resid[0].new_zeros((0,) + runs.base_resid[0].shape)  # step-3 residuals [sender, ...]
        done: list[Head] = []  # the senders in `state`, in order
        bar = kit.progress(model, model.cfg.n_layers, f"{self.name}: layers", self.progress)
        for layer in range(model.cfg.n_layers):
            bar.update(1)
            here = [r.head for r in receivers if r.layer == layer]
            if here and done:
                for combo, metrics in self._receive(runs, layer, state, here, per_copy).items():
                    for i, sender in enumerate(done):
                        for j, head in enumerate(here):
                            key = (sender.name, Head(layer, head).name)
                            edges.setdefault(key, {})["+".join(combo)] = float(metrics[i, j])
            new = [s.head for s in senders if s.layer == layer]
            state = self._advance(runs, layer, state, new, mask, per_copy)
            done += [Head(layer, h) for h in new]
        bar.close()
        if to_logits and done:
            position = batch.position
            for chunk in kit.chunks(len(done), per_copy):
                flat = einops.rearrange(state[chunk.start:chunk.stop], "c b p d -> (c b) p d")
                logits = forward.unembed(model, flat, position.repeat(len(chunk)))
                values = kit.metric_means(runs.task, logits, batch, len(chunk))
                for i, value in zip(chunk, values):
                    edges[(done[i].name, LOGITS)] = {"": float(value)}
        return edges

    def _position_mask(self, n_pos: int, kept: int, like: Tensor) -> Optional[Tensor]:
        if self.positions is None:
            return None
        bad = [p for p in self.positions if p >= n_pos]
        if bad:
            raise InvalidOptionError(f"positions {bad!r} lie outside the prompts; expected positions in [0, {n_pos})")
        mask = like.new_zeros(kept)
        mask[[p for p in self.positions if p < kept]] = 1.0  # after the last read-out nothing can matter
        return mask[None, :, None]

    def _advance(self, runs: PatchRuns, layer: int, state: Tensor, new: list[int],
                 mask: Optional[Tensor], per_copy: int) -> Tensor:
        """Step-3 residuals entering `layer` -> entering `layer + 1`, adding `layer`'s senders as new copies.
        Every head is frozen at its base output, so attention adds its base output; the senders add
        their change through W_O; MLPs are recomputed (or frozen with `freeze_mlps`)."""
        model = runs.model
        base_mid = runs.base_resid[layer] + runs.base_attn_out[layer]  # on this layer's device
        mid = state.to(base_mid.device) + runs.base_attn_out[layer]
        if new:
            deltas = runs.head_deltas(layer)[new]
            if mask is not None:
                deltas = deltas * mask
            mid = torch.cat([mid, base_mid[None] + deltas.to(base_mid.device)])
        if model.cfg.attn_only or not len(mid):
            return mid
        if self.freeze_mlps:
            return mid + (kit.finish_block(model, layer, base_mid) - base_mid)
        out = torch.empty_like(mid)
        for chunk in kit.chunks(len(mid), per_copy):
            flat = einops.rearrange(mid[chunk.start:chunk.stop], "c b p d -> (c b) p d")
            out[chunk.start:chunk.stop] = kit.finish_block(model, layer, flat).view(len(chunk), *mid.shape[1:])
        return out

    def _receive(self, runs: PatchRuns, layer: int, state: Tensor, heads: list[int],
                 per_copy: int) -> dict[tuple[str, ...], Tensor]:
        """Step 4 for receivers `heads` of `layer` and every sender in `state`: metric means
        ``[sender, receiver]`` per input combination."""
        model = runs.model
        names = {i: hooks.site(model, layer, i) for i in INPUTS}
        z_name = hooks.site(model, layer, "z")
        base = runs.base_resid[layer]
        base_z = block_activations(model, base, layer, [z_name])[z_name][:, :, heads]
        w_o = kit.output_weights(model, layer)[heads].to(base_z.device)
        combos = self._combos()
        out = {combo: torch.zeros(len(state), len(heads)) for combo in combos}
        senders_per_pass = max(1, per_copy // len(heads))
        for chunk in kit.chunks(len(state), senders_per_pass):
            flat = einops.rearrange(state[chunk.start:chunk.stop], "c b p d -> (c b) p d")
            step3 = block_activations(model, flat, layer, [names[i] for i in self.inputs])
            base_copies = base.repeat(len(chunk), 1, 1)
            for combo in combos:
                z = block_activations(model, base_copies, layer, [z_name], {names[i]: step3[names[i]] for i in combo})[z_name]
                z = einops.rearrange(z[:, :, heads], "(c b) p r e -> c b p r e", c=len(chunk))
                deltas = einops.einsum(z - base_z[None], w_o, "c b p r e, r e d -> c r b p d")
                metrics = runs.finish(layer, einops.rearrange(deltas, "c r b p d -> (c r) b p d"))
                out[combo][chunk.start:chunk.stop] = metrics.view(len(chunk), len(heads)).cpu()
        return out

    # --- the result -----------------------------------------------------------------------------------
    def graph(self, model: Any, measurement: Measurement[PathPatches]) -> HeadGraph:
        """Every head a node (scored by its direct effect where head -> logits was measured), every edge."""
        baseline, edges = measurement.baseline(), measurement.values
        graph = HeadGraph(n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads)
        score = lambda metric: float(baseline.score(torch.tensor(metric), self.direction))  # noqa: E731
        for head in all_heads(model):
            direct = edges.get((head.name, LOGITS))
            graph.add_node(head, score(direct[""]) if direct else None)
        joint = "+".join(self.inputs)
        for (sender, receiver), metrics in edges.items():
            if receiver == LOGITS:
                graph.add_edge(sender, receiver, score(metrics[""]), effect="direct")
                continue
            extras = {f"score_{combo}": score(m) for combo, m in metrics.items() if combo != joint}
            graph.add_edge(sender, receiver, score(metrics[joint]), effect="direct", inputs=joint, **extras)
        return graph


def top_receivers(graph: HeadGraph, k: int, include_logits: bool = True) -> tuple[str, ...]:
    """The `k` heads of a previous graph with the largest |score|, as `receivers` for the next round of
    path patching (the usual discovery from the logits backwards)."""
    if k < 1:
        raise InvalidOptionError(f"k={k!r}; expected a positive number of receivers")
    names = tuple(name for name, _ in graph.top(k, by="absolute"))
    return names + ((LOGITS,) if include_logits else ())
