"""Path patching (Wang et al. 2022; Goldowsky-Dill et al. 2023): sender -> receiver, every other path held at base.

Senders: the input (``embed``), heads and MLPs; receivers: a head's q/k/v input, an MLP's input, or the logits: the
edge graph every graph engine shares (`circuits.nodes.all_edges`). Exact algorithm, batched (see
docs/path_patching.md). Denoising (default): the base run is corrupted and the sender gets its clean output; noising
swaps the roles.

Step 3 (every head frozen at its base output except the sender, MLPs recomputed unless `freeze_mlps`)
needs no attention at all: with every head frozen, the residual entering layer L is the base residual
plus the sender's change (a head's through W_O, an MLP's output change, the embedding's change), carried through the
recomputed MLPs. It is kept as one stacked tensor ``[sender, batch, pos, d_model]`` advanced layer by layer, and
serves every receiver of every sender.

Step 4 (only the receiver's input replaced by its step-3 value): a head receiver's q/k/v are computed
from the step-3 residual by running block L on it and capturing ``hook_q``/``hook_k``/``hook_v``
(the per-head projections; q/k/v depend on the residual position by position, so this *is* replacing the
input; TL4's ``hook_q_input`` points are gated behind ``use_split_qkv_input`` and are not used). Heads do
not interact within a layer, so one run of block L with *every* head's q (or k, v) replaced gives each
receiver's patched output at once; only receiver h's change ``(z_h' - z_h) @ W_O[L, h]`` is then added to
the base residual and the model finished from layer L, many (sender, receiver) copies per stacked pass. An MLP
receiver's output on the step-3 residual after its layer's attention replaces its base output, and the model is
finished from the next layer.

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
from circuits.engines import base, coverage, kit
from circuits.engines.kit import Measurement, PatchRuns, block_activations
from circuits.errors import InvalidOptionError, UnknownNameError
from circuits.graph import HeadGraph
from circuits.positions import check_kind, graph_record, label_masks, labelled
from circuits.nodes import EMBED, INPUTS, LOGITS, MLP, Head, Input, all_heads, all_mlps, parse_node, stage

# (sender, receiver) -> {input combination ("q", "k", "v", "q+k+v"; "" for an MLP or the logits): patched metric mean}; with
# positions="tokens" or "spans" also "{combination}@{label}": the sender patched at that token (span) alone
PathPatches = dict[tuple[str, str], dict[str, float]]
Sender = Union[Input, Head, MLP]
Receiver = Union[Head, MLP]
EMBED_SITE = (0, "resid_pre")  # what the embedding writes: the residual stream entering block 0


@base.options()
@dataclass(frozen=True)
class PathPatching(base.EngineBase):
    direction: str = "denoising"  # or "noising"
    # Sequences (or one name) are accepted and stored as tuples.
    receivers: Union[str, Sequence[str], None] = None  # heads, MLPs ("M2") and/or "logits"; None: all after a sender
    senders: Union[str, Sequence[str], None] = None  # "embed", heads and/or MLPs; None: all of them
    inputs: Union[str, Sequence[str]] = INPUTS  # receiver inputs patched together (edge score); each also alone
    per_input: bool = True  # also score each input alone (edge attributes "score_q", "score_k", "score_v")
    # None: the sender patched at every position; integer positions: only there; "tokens" or "spans": also each
    # position (span) alone, scores per position in edge attributes "positions", "positions_q", ... (docs/positional.md)
    positions: Union[str, Sequence[int], None] = None
    freeze_mlps: bool = False  # step 3: MLPs frozen at their base values instead of recomputed
    memory_mb: float = 256.0  # budget for one stacked forward pass
    progress: bool = True  # a progress bar over layers on large models (kit.progress); not in results

    name = "path_patching"

    def __post_init__(self) -> None:
        for field in ("receivers", "senders", "inputs", "positions"):
            value = getattr(self, field)
            if field == "positions" and isinstance(value, str):
                check_kind(value)
                continue
            if isinstance(value, str):
                value = (value,)
            if value is not None:
                object.__setattr__(self, field, tuple(value))
        kit.check_direction(self.direction)
        bad = [i for i in self.inputs if i not in INPUTS]
        if bad or not self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise InvalidOptionError(f"inputs={self.inputs!r} (bad: {bad!r}); expected a non-empty selection "
                                     f"without repeats from {INPUTS}")
        if self.positional is None and self.positions is not None and \
                any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in self.positions):
            raise InvalidOptionError(f"positions={self.positions!r}; expected non-negative integer positions")
        kit.check_memory(self.memory_mb)

    @property
    def positional(self) -> Optional[str]:
        """"tokens" or "spans" when edges are also scored per position (span), else None."""
        return self.positions if isinstance(self.positions, str) else None

    @property
    def score_meaning(self) -> str:
        return (f"edge sender->receiver (effect 'direct'): the metric change when only that path is patched ({self.direction}; "
                "sender = the input (embed), a head or an MLP; receiver = a head's q/k/v inputs together, per input "
                "in score_q/score_k/score_v, an MLP's input, or the logits); node: the head's or MLP's direct effect "
                "on the logits (absent when node->logits was not measured); all normalised by m_clean - m_corrupted")

    def check(self, model: Any) -> None:
        self.plan(model)  # bad names fail before any model work

    def measure(self, model: Any, task: Any, batch: PromptBatch) -> Measurement[PathPatches]:
        """Patched metric means per edge (`PathPatches`), for a batch you built yourself."""
        senders, receivers, to_logits = self.plan(model)
        sites = kit.every_layer(model, "mlp_out") if any(s.kind == "mlp" for s in senders) else []
        with base.session(model):
            runs = PatchRuns.prepare(model, task, batch, self.direction, sites)
            return runs.measured(self._edges(runs, senders, receivers, to_logits))

    def plan(self, model: Any) -> tuple[list[Sender], list[Receiver], bool]:
        """Senders, receivers (heads and MLPs, in the order they read) and whether the logits are a receiver;
        typed errors on bad names."""
        nodes = sorted([*all_heads(model), *all_mlps(model)], key=_order)
        if self.senders is None:
            senders = [Input(), *nodes]
        else:
            senders = sorted({_checked(model, s, "sender") for s in self.senders}, key=_order)
        first = min(stage(s) for s in senders)
        if self.receivers is None:
            return senders, [r for r in nodes if stage(r) > first], True
        to_logits = LOGITS in self.receivers
        receivers = sorted({_checked(model, r, "receiver") for r in self.receivers if r != LOGITS}, key=_order)
        for receiver in receivers:
            if stage(receiver) <= first:
                raise InvalidOptionError(
                    f"receiver {receiver.name!r} does not read after any of its senders "
                    f"({', '.join(s.name for s in senders[:8])}{'...' if len(senders) > 8 else ''}); "
                    f"expected a receiver after a sender (a head in a later layer, an MLP in the same or a later "
                    f"layer), or {LOGITS!r}")
        return senders, receivers, to_logits

    # --- the computation ------------------------------------------------------------------------------
    def _combos(self) -> list[tuple[str, ...]]:
        single = [(i,) for i in self.inputs] if self.per_input and len(self.inputs) > 1 else []
        return single + [tuple(self.inputs)]

    def _edges(self, runs: PatchRuns, senders: list[Sender], receivers: list[Receiver],
               to_logits: bool) -> PathPatches:
        model, batch = runs.model, runs.batch
        first = runs.base_resid[0]
        masks = self._masks(batch, first, runs.task)
        labels = list(masks)
        per_copy = kit.copies_per_pass(model, batch, self.memory_mb)
        edges: PathPatches = {}
        # step-3 residuals [copy, ...]: per sender in `done`, one copy per position mask (`labels`), in order
        state, done = first.new_zeros((0,) + first.shape), []
        if Input() in senders:
            state = first + self._copies(runs.change(EMBED_SITE).to(first.device)[None], masks)
            done = [(Input(), label) for label in labels]
        bar = kit.progress(model, model.cfg.n_layers, f"{self.name}: layers", self.progress)
        for layer in range(model.cfg.n_layers):
            bar.update(1)
            here = [r.head for r in receivers if isinstance(r, Head) and r.layer == layer]
            if here and done:
                for combo, metrics in self._receive(runs, layer, state, here, per_copy).items():
                    for i, (sender, label) in enumerate(done):
                        for j, head in enumerate(here):
                            edges.setdefault((sender.name, Head(layer, head).name), {})[
                                _key("+".join(combo), label)] = float(metrics[i, j])
            new = [s.head for s in senders if isinstance(s, Head) and s.layer == layer]
            mid = self._attention(runs, layer, state, new, masks)
            done += [(Head(layer, h), label) for h in new for label in labels]
            if model.cfg.attn_only:
                state = mid
                continue
            state = self._through_mlp(runs, layer, mid, done, MLP(layer) in receivers, edges, per_copy)
            if MLP(layer) in senders:
                base_post = kit.finish_block(model, layer, runs.base_resid[layer] + runs.base_attn_out[layer])
                change = self._copies(runs.change((layer, "mlp_out")).to(base_post.device)[None], masks)
                state = torch.cat([state.to(base_post.device), base_post + change])
                done += [(MLP(layer), label) for label in labels]
        bar.close()
        if to_logits and done:
            position = batch.position
            for chunk in kit.chunks(len(done), per_copy):
                flat = einops.rearrange(state[chunk.start:chunk.stop], "c b p d -> (c b) p d")
                logits = forward.unembed(model, flat, position.repeat(len(chunk)))
                values = kit.metric_means(runs.task, logits, batch, len(chunk))
                for i, value in zip(chunk, values):
                    sender, label = done[i]
                    edges.setdefault((sender.name, LOGITS), {})[_key("", label)] = float(value)
        return edges

    def _masks(self, batch: PromptBatch, like: Tensor, task: Any) -> dict[Optional[str], Optional[Tensor]]:
        """Where each copy of a sender is patched: label -> mask ``[batch or 1, pos, 1]`` (None: everywhere). The
        whole-edge copy has label None; with `positional`, one more copy per position ("0", "1", ...) or span."""
        n_pos, kept = batch.n_positions, batch.clean.shape[1]
        if self.positional is None and self.positions is None:
            return {None: None}
        if self.positional is None:
            bad = [p for p in self.positions if p >= n_pos]
            if bad:
                raise InvalidOptionError(f"positions {bad!r} lie outside the prompts; expected positions in [0, {n_pos})")
            mask = like.new_zeros(kept)
            mask[[p for p in self.positions if p < kept]] = 1.0  # after the last read-out nothing can matter
            return {None: mask[None, :, None]}
        masks, labels = label_masks(batch, self.positional, task)
        return {None: None, **{label: mask.to(like)[..., None] for label, mask in zip(labels, masks)}}

    @staticmethod
    def _copies(deltas: Tensor, masks: dict[Optional[str], Optional[Tensor]]) -> Tensor:
        """``[sender * mask, batch, pos, d_model]``: each sender's change (``[sender, batch, pos, d_model]``) under each
        mask, sender-major (the order of `done`)."""
        copies = [deltas if mask is None else deltas * mask.to(deltas.device) for mask in masks.values()]
        return torch.stack(copies, 1).flatten(0, 1)

    def _attention(self, runs: PatchRuns, layer: int, state: Tensor, new: list[int],
                   masks: dict[Optional[str], Optional[Tensor]]) -> Tensor:
        """Step-3 residuals entering `layer` -> after its attention, adding `layer`'s head senders as new copies.
        Every head is frozen at its base output, so attention adds its base output; the senders add their
        change through W_O."""
        base_mid = runs.base_resid[layer] + runs.base_attn_out[layer]  # on this layer's device
        mid = state.to(base_mid.device) + runs.base_attn_out[layer]
        if new:
            deltas = self._copies(runs.head_deltas(layer)[new].to(base_mid.device), masks)
            mid = torch.cat([mid, base_mid[None] + deltas])
        return mid

    def _through_mlp(self, runs: PatchRuns, layer: int, mid: Tensor, done: list[tuple[Sender, Optional[str]]],
                     receives: bool,
                     edges: PathPatches, per_copy: int) -> Tensor:
        """Step-3 residuals after `layer`'s attention -> after its MLP (recomputed, or frozen with `freeze_mlps`);
        when the MLP is a receiver, each copy's edge into it: the base run with only the MLP's input replaced
        by the copy's (its output change added to the base residual after the block, the model finished)."""
        model = runs.model
        base_mid = runs.base_resid[layer] + runs.base_attn_out[layer]
        base_post = kit.finish_block(model, layer, base_mid)
        if not len(mid) or (self.freeze_mlps and not receives):
            return mid + (base_post - base_mid)
        post = torch.empty_like(mid)
        for chunk in kit.chunks(len(mid), per_copy):
            flat = einops.rearrange(mid[chunk.start:chunk.stop], "c b p d -> (c b) p d")
            post[chunk.start:chunk.stop] = kit.finish_block(model, layer, flat).view(len(chunk), *mid.shape[1:])
        if receives:
            name = MLP(layer).name
            for chunk in kit.chunks(len(mid), per_copy):
                # (the MLP's output on the copy's input) - (its base output), added after the base block
                change = (post[chunk.start:chunk.stop] - mid[chunk.start:chunk.stop]) - (base_post - base_mid)[None]
                residual = einops.rearrange(base_post[None] + change, "c b p d -> (c b) p d")
                logits = forward.run_from(model, residual, layer + 1, runs.batch.position.repeat(len(chunk)))
                for i, value in zip(chunk, kit.metric_means(runs.task, logits, runs.batch, len(chunk))):
                    sender, label = done[i]
                    edges.setdefault((sender.name, name), {})[_key("", label)] = float(value)
        return mid + (base_post - base_mid) if self.freeze_mlps else post

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
        """Every head and MLP a node (scored by its direct effect where node -> logits was measured), every edge;
        ``meta["unscored_edges"]``: the kinds of edges of the model's edge graph left unscored (`coverage`)."""
        baseline, edges = measurement.baseline(), measurement.values
        graph = HeadGraph(n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads)
        score = lambda metric: float(baseline.score(torch.tensor(metric), self.direction))  # noqa: E731
        for node in [*all_heads(model), *all_mlps(model)]:
            direct = edges.get((node.name, LOGITS))
            graph.add_node(node, score(direct[""]) if direct else None)
        joint = "+".join(self.inputs)
        for (sender, receiver), values in edges.items():
            metrics, at = _split(values)
            if "" in metrics:  # the logits or an MLP
                extras = {"positions": {p: score(m) for p, m in at[""].items()}} if at else {}
                graph.add_edge(sender, receiver, score(metrics[""]), effect="direct", **extras)
                continue
            extras = {f"score_{combo}": score(m) for combo, m in metrics.items() if combo != joint}
            for combo, per_position in at.items():
                extras["positions" if combo == joint else f"positions_{combo}"] = {
                    p: score(m) for p, m in per_position.items()}
            graph.add_edge(sender, receiver, score(metrics[joint]), effect="direct", inputs=joint, **extras)
        if self.positional:
            labels = list(labelled(measurement.batch, self.positional)[1])
            graph.meta["positions"] = graph_record(
                self.positional, labels, "where effects at different positions interact (patching is not linear); "
                                         "score is the whole edge patched")
        restricted = [f"{option}={getattr(self, option)!r}" for option in ("senders", "receivers", "inputs")
                      if getattr(self, option) is not None and getattr(self, option) != INPUTS]
        restricted += ["per_input=False"] if not self.per_input and len(self.inputs) > 1 else []
        graph.meta["unscored_edges"] = coverage.unscored(model, graph, "options " + ", ".join(restricted)
                                                         if restricted else "")
        return graph


def _key(combo: str, label: Optional[str]) -> str:
    """A metric's key in `PathPatches`: the input combination, and ``"@label"`` for a copy patched at one position."""
    return combo if label is None else f"{combo}@{label}"


def _split(values: dict[str, float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """An edge's metrics: whole-edge ones by input combination, and per combination the per-position ones."""
    whole, at = {}, {}
    for key, value in values.items():
        combo, _, label = key.partition("@")
        if label:
            at.setdefault(combo, {})[label] = value
        else:
            whole[combo] = value
    return whole, at


def _order(node: Any) -> tuple[Union[int, float], int]:
    return stage(node), getattr(node, "head", 0)


def _checked(model: Any, name: Any, role: str) -> Any:
    """A sender ("embed", a head, an MLP) or receiver (a head, an MLP) checked against the model: typed errors
    naming the bad value and the valid names."""
    cfg = model.cfg
    valid = [f"L0H0 .. L{cfg.n_layers - 1}H{cfg.n_heads - 1}"] + ([] if cfg.attn_only else [f"M0 .. M{cfg.n_layers - 1}"])
    valid += [f"{EMBED!r} (senders only)"] if role == "sender" else [f"{LOGITS!r} (receivers only)"]
    try:
        node = parse_node(name)
    except UnknownNameError:
        raise UnknownNameError(role, name, valid) from None
    if node.kind == "head":
        return Head.in_model(model, name, tuple(valid[1:]), what=role)
    if node.kind == "mlp" and not cfg.attn_only and node.layer < cfg.n_layers:
        return node
    if node.kind == "embed" and role == "sender":
        return node
    raise UnknownNameError(role, name, valid)


def top_receivers(graph: HeadGraph, k: int, include_logits: bool = True) -> tuple[str, ...]:
    """The `k` heads of a previous graph with the largest |score|, as `receivers` for the next round of
    path patching (the usual discovery from the logits backwards)."""
    if k < 1:
        raise InvalidOptionError(f"k={k!r}; expected a positive number of receivers")
    names = tuple(name for name, _ in graph.top(k, by="absolute"))
    return names + ((LOGITS,) if include_logits else ())
