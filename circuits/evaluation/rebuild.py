"""One forward pass in which every receiver's input is rebuilt from its in-circuit senders (MIB's evaluation).

A receiver (a head's q, k or v input, an MLP's input, the read-out) reads the residual stream of this pass with,
for each sender whose edge to it is outside the circuit, that sender's output in this pass swapped for its ablated
output: ``input = resid + Σ_{s ∉ C} (ablated_s − out_s)``. The residual stream itself runs on unchanged (MIB's
hooks change the receivers' inputs, never the stream). So each head reads its own q, k and v inputs: each goes
through the block's first norm and that head's own ``W_Q`` (``W_K``, ``W_V``) and bias, which is what the model's
``hook_q`` (``hook_k``, ``hook_v``) holds (tested), and the block's attention then runs on them (rotary, masks and
scale as the model does). With grouped-query attention, query heads that share a key head may read different keys:
the attention runs once per position in the group, each run giving its own query heads. Receivers of one copy that
hear the same senders ablated (often all, or none) share one input, built and normed once; every head projects
each distinct input and takes its own.

Circuits are stacked as copies of the batch; a receiver whose every edge is in the circuit in every copy is left
as the model computes it, so the whole circuit's pass is the plain model's. A circuit of positional edges has a mask
with two more axes, ``[copies, sender, receiver, batch, pos]``: at each prompt's token, the senders outside the
circuit there (plain circuits keep the three-axis mask: one matrix product per receiver, as before).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import einops
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuits import forward, hooks
from circuits._task import PromptBatch
from circuits.engines.kit import block_activations, metric_means
from circuits.evaluation.ablations import head_outputs
from circuits.nodes import INPUTS

# True: the edge is outside the circuit (its sender ablated); positional circuits: at each prompt's token
Ablated = Union[Bool[Tensor, "copies sender receiver"], Bool[Tensor, "copies sender receiver batch pos"]]


@dataclass
class Rebuild:
    """The clean prompts, the senders' ablated outputs and the model: `metrics` evaluates stacked circuits."""

    model: Any
    task: Any
    batch: PromptBatch  # ready for the model (`on_model`)
    ablated: Tensor  # [sender, batch or 1, pos or 1, d_model]
    token_output: Tensor  # the input node's output on the clean prompts [batch, pos, d_model]

    def metrics(self, ablated: Ablated) -> Float[Tensor, " copies"]:
        """The metric mean of each copy's circuit (`ablated`: its edges outside the circuit)."""
        model, cfg = self.model, self.model.cfg
        copies, heads, has_mlp = ablated.shape[0], cfg.n_heads, not cfg.attn_only
        ablated = ablated.to(forward.input_device(model))
        resid = forward.embed(model, self.batch.clean).repeat(copies, 1, 1)
        # per sender, what swapping its output in this pass for its ablated one adds to a receiver's input
        swaps = Swaps(torch.empty(len(self.ablated), *resid.shape, dtype=resid.dtype, device=resid.device), copies)
        swaps.add(self.ablated[0], self.token_output.repeat(copies, 1, 1))
        column = 0
        for layer in range(cfg.n_layers):
            z, attn_out = self._attention(layer, resid, ablated[:, :, column:column + 3 * heads], swaps)
            column += 3 * heads
            for out in head_outputs(model, layer, z):
                swaps.add(self.ablated[swaps.count], out)
            resid = resid + attn_out.to(resid.device)
            if has_mlp:
                block = model.blocks[layer]
                mlp_out = block.mlp(block.ln2(swaps.rebuilt(resid, ablated[:, :, column:column + 1])[0]))
                swaps.add(self.ablated[swaps.count], mlp_out)
                resid = resid + mlp_out
                column += 1
        final = swaps.rebuilt(resid, ablated[:, :, column:column + 1])[0]
        logits = forward.unembed(model, final, self.batch.position.repeat(copies))
        return metric_means(self.task, logits, self.batch, copies)

    def _attention(self, layer: int, resid: Tensor, ablated: Tensor, swaps: "Swaps") -> tuple[Tensor, Tensor]:
        """Block `layer`'s ``z`` and attention output, each head reading its own rebuilt q, k and v inputs."""
        model, heads = self.model, self.model.cfg.n_heads
        names = {i: hooks.site(model, layer, i) for i in INPUTS}
        z_name, out_name = hooks.site(model, layer, "z"), hooks.site(model, layer, "attn_out")
        rebuilt = {i: ablated[:, :swaps.count, k * heads:(k + 1) * heads] for k, i in enumerate(INPUTS)}
        norm = model.blocks[layer].ln1
        replace = {names[i]: self._projected(layer, i, *swaps.normed(resid, rebuilt[i], norm))
                   for i in INPUTS if rebuilt[i].any()}
        group = heads // (getattr(model.cfg, "n_key_value_heads", None) or heads)
        if group == 1 or not (names["k"] in replace or names["v"] in replace):
            found = block_activations(model, resid, layer, [z_name, out_name], _per_kv_head(replace, names, group, 0))
            return found[z_name], found[out_name]
        # grouped keys: run i gives query heads kv * group + i, each reading its own k and v
        z, bias = None, None
        for i in range(group):
            found = block_activations(model, resid, layer, [z_name, out_name], _per_kv_head(replace, names, group, i))
            mine = torch.arange(heads, device=found[z_name].device) % group == i
            z = found[z_name] * mine[:, None] if z is None else z + found[z_name] * mine[:, None]
            if bias is None:  # the attention output beyond its heads' outputs (the bias): the same in every run
                bias = found[out_name] - head_outputs(model, layer, found[z_name]).sum(0)
        return z, head_outputs(model, layer, z).sum(0) + bias

    def _projected(self, layer: int, which: str, normed: Tensor, index: Tensor) -> Tensor:
        """Head h's q (k, v) in copy c from its normed input ``normed[index[c, h]]``: its ``W`` and bias;
        ``[copies * batch, pos, head, d_head]`` with one head per query head. Every head projects every distinct
        input (a few per copy) and each takes its own: cheaper than building an input per head."""
        attn, heads = self.model.blocks[layer].attn, index.shape[1]
        with forward.readable_weights(attn):
            weight = getattr(attn, f"W_{which.upper()}").detach()
            bias = _bias(attn, which)
        per_head = weight.repeat_interleave(heads // weight.shape[0], dim=0).to(normed)
        every = einops.einsum(normed, per_head, "distinct batch pos d, head d e -> distinct batch pos head e")
        if bias is not None:
            every = every + bias.repeat_interleave(heads // bias.shape[0], dim=0).to(every)
        own = torch.arange(heads, device=every.device)
        picked = every[index.to(every.device), :, :, own[None]]  # [copies, head, batch, pos, e]
        return einops.rearrange(picked, "copies head batch pos e -> (copies batch) pos head e")


@dataclass
class Swaps:
    """Per sender so far, ``ablated − output`` in this pass (``[sender, copies * batch, pos, d_model]``, filled in
    forward order): what swapping its output for its ablated one adds to a receiver's input."""

    values: Tensor
    copies: int
    count: int = 0

    def add(self, ablated: Tensor, output: Tensor) -> None:
        rows = output.shape[0] // self.copies
        swap = ablated.to(output.device, output.dtype) - output.view(self.copies, rows, *output.shape[1:])
        self.values[self.count] = swap.view(output.shape).to(self.values.device)
        self.count += 1

    def rebuilt(self, resid: Tensor, ablated: Tensor) -> list[Tensor]:
        """Each receiver's input, ``resid`` plus the swaps of its senders outside the circuit (receivers: the last
        axis of `ablated`, ``[copies, sender, receiver]``)."""
        heard = ablated[:, :self.count]
        if not heard.any():
            return [resid] * ablated.shape[2]
        stacked = self.values[:self.count].view(self.count, self.copies, -1, *resid.shape[1:])
        update = einops.einsum(heard.to(stacked.dtype), stacked, f"copies sender receiver{_at(heard, 3)}, "
                               "sender copies batch pos d -> receiver copies batch pos d")
        return list(resid[None] + update.reshape(ablated.shape[2], *resid.shape).to(resid.device))

    def normed(self, resid: Tensor, ablated: Tensor, norm: Any) -> tuple[Tensor, Tensor]:
        """`norm` of the receivers' rebuilt inputs: the distinct inputs ``[distinct, batch, pos, d_model]`` and, per
        copy and receiver, which is its own (``[copies, receiver]``). Receivers of one copy that hear the same
        senders ablated (often: all of them, or none) read the same input, built and normed once."""
        heard = ablated[:, :self.count]
        rows = resid.shape[0] // self.copies
        values = self.values[:self.count].view(self.count, self.copies, rows, *resid.shape[1:])
        per_copy = resid.view(self.copies, rows, *resid.shape[1:])
        inputs, inverse, seen = [], [], 0
        for copy in range(self.copies):
            by_receiver = heard[copy].transpose(0, 1)  # [receiver, sender(, batch, pos)]
            patterns, index = torch.unique(by_receiver.flatten(1), dim=0, return_inverse=True)  # [distinct, ...]
            patterns = patterns.view(-1, *by_receiver.shape[1:])
            update = einops.einsum(patterns.to(values.dtype), values[:, copy],
                                   f"distinct sender{_at(patterns, 2)}, sender batch pos d -> distinct batch pos d")
            inverse.append(index + seen)
            inputs.append(per_copy[copy][None] + update.to(resid.device))
            seen += len(patterns)
        distinct = torch.cat(inputs)
        return norm(distinct.flatten(0, 1)).view(distinct.shape), torch.stack(inverse)


def _at(mask: Tensor, axes: int) -> str:
    """The einsum axes a mask has beyond its first `axes`: a positional mask's " batch pos", a plain one's none."""
    return " batch pos" if mask.ndim == axes + 2 else ""


def _bias(attn: Any, which: str) -> Tensor | None:
    try:
        bias = getattr(attn, f"b_{which.upper()}")
    except AttributeError:  # a model without q/k/v biases (Llama's bridge)
        return None
    return None if bias is None else bias.detach()


def _per_kv_head(replace: dict[str, Tensor], names: dict[str, str], group: int, member: int) -> dict[str, Tensor]:
    """The replacements as the hooks hold them: k and v per key head, key head g taking query head
    ``g * group + member``'s."""
    if group == 1:
        return replace
    out = dict(replace)
    for i in ("k", "v"):
        if names[i] in out:
            out[names[i]] = out[names[i]][:, :, member::group]
    return out
