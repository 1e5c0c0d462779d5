"""What an edge outside a circuit carries instead of its sender's output: the ablations, and the senders' outputs.

Senders, in `circuits.nodes.senders` order, are the input (the token embedding, ``hook_embed``; a float input
itself), every head (its ``z · W_O``, no bias) and every MLP (``hook_mlp_out``). Positional embeddings and the
attention-output bias belong to no node, as in MIB's graphs: they are never ablated.

- ``"patching"``: the sender's output on the corrupted prompt (MIB's default);
- ``"mean"``: the sender's own mean output over the reference prompts and their positions (one vector per sender);
- ``"mean_positional"``: its mean at each position over the reference prompts;
- ``"zero"``: nothing.

Means count only the positions a prompt's read-out can see (in a causal model, positions after a prompt's read-out
are padding or cannot matter); a position no reference prompt reaches gets the sender's mean over every counted
position (as `circuits.comparison.faithfulness.reference_means` does for head circuits).
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from circuits import hooks
from circuits._task import PromptBatch
from circuits.engines.kit import output_weights, read_out_and_cache
from circuits.errors import InvalidOptionError

ABLATIONS = ("patching", "mean", "mean_positional", "zero")
TOKEN_EMBEDDING = "hook_embed"  # the input node's output: token embeddings only (MIB's InputNode)

Outputs = Float[Tensor, "sender batch pos d_model"]


def check_ablation(ablation: str) -> None:
    if ablation not in ABLATIONS:
        raise InvalidOptionError(f"ablation={ablation!r}; expected one of {ABLATIONS}")


def output_sites(model: Any) -> list[str]:
    """The hooks senders' outputs are read from: per layer ``hook_z`` and, with MLPs, ``hook_mlp_out``."""
    kinds = ("z",) if model.cfg.attn_only else ("z", "mlp_out")
    return [hooks.site(model, layer, kind) for layer in range(model.cfg.n_layers) for kind in kinds]


def head_outputs(model: Any, layer: int,
                 z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "head batch pos d_model"]:
    """Each head's output ``z_h · W_O[h]`` (no bias)."""
    w_o = output_weights(model, layer).detach().to(z.device, z.dtype)
    return einops.einsum(z, w_o, "batch pos head d_head, head d_head d_model -> head batch pos d_model")


def sender_outputs(model: Any, inputs: Tensor, position: Tensor) -> tuple[Tensor, Outputs]:
    """One plain forward pass over `inputs`: its read-out logits and every sender's output, stacked."""
    names = output_sites(model)
    floats = inputs.is_floating_point()
    embedding = [] if floats else [hooks.checked(model, TOKEN_EMBEDDING)]
    logits, cache = read_out_and_cache(model, inputs, names + embedding, position)
    device = logits.device
    out = [(inputs.to(device) if floats else cache[TOKEN_EMBEDDING].to(device))[None]]
    for layer in range(model.cfg.n_layers):
        out.append(head_outputs(model, layer, cache[names[layer * (1 if model.cfg.attn_only else 2)]]).to(device))
        if not model.cfg.attn_only:
            out.append(cache[names[layer * 2 + 1]].to(device)[None])
    return logits, torch.cat([t.to(out[0].dtype) for t in out])


def ablated_outputs(model: Any, batch: PromptBatch, ablation: str, clean: Outputs,
                    reference: PromptBatch | None) -> Float[Tensor, "sender _batch _pos d_model"]:
    """What each sender's output is replaced by on the edges outside a circuit (broadcastable to `clean`, the
    senders' clean outputs on `batch`): `batch` and `reference` are ready for `model` (`on_model`)."""
    check_ablation(ablation)
    if ablation == "zero":
        return torch.zeros_like(clean[:, :1, :1])
    if ablation == "patching":
        return sender_outputs(model, batch.corrupted, batch.position)[1]
    assert reference is not None
    _, outputs = sender_outputs(model, reference.clean, reference.position)
    means = position_means(outputs, counted_positions(model, reference), clean.shape[2])  # [sender, pos, d_model]
    if ablation == "mean":
        valid = counted_positions(model, reference).to(outputs.device, outputs.dtype)
        return ((outputs * valid[None, :, :, None]).sum((1, 2)) / valid.sum())[:, None, None]
    return means[:, None]


def counted_positions(model: Any, batch: PromptBatch) -> Tensor:
    """``[batch, pos]``: True where a prompt's read-out can see the position (every position, if not causal)."""
    length = batch.clean.shape[1]
    if model.cfg.attention_dir != "causal":
        return torch.ones(batch.size, length, dtype=torch.bool)
    return torch.arange(length)[None] <= batch.position.cpu()[:, None]


def position_means(outputs: Float[Tensor, "sender batch pos d_model"], valid: Tensor,
                   n_positions: int) -> Float[Tensor, "sender n_positions d_model"]:
    """Per sender and position, the mean over the prompts that count there (`valid`); the sender's mean over every
    counted position where none does, and for positions beyond the reference prompts' length."""
    weights = valid.to(outputs.device, outputs.dtype)[None, :, :, None]
    overall = (outputs * weights).sum((1, 2)) / weights.sum()  # [sender, d_model]
    counts = weights.sum(1)  # [1, pos, 1]
    per_position = torch.where(counts > 0, (outputs * weights).sum(1) / counts.clamp(min=1), overall[:, None])
    means = overall[:, None].expand(-1, n_positions, -1).clone()
    shared = min(n_positions, outputs.shape[2])
    means[:, :shared] = per_position[:, :shared]
    return means
