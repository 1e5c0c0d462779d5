"""The head tests of Wang et al. (2022) on IOI prompts, for `analyses.ioi`: attention between the named token
positions, direct logit attribution, the OV copying score, and attention on repeated random tokens.

Every score is per head, ``[layer, head]`` (query heads under grouped-query attention), per prompt (`measure`, one
forward pass) or averaged:

- ``attention[(query, key)]``: the attention probability from the token at `query` to the token at `key` (roles
  of `tasks.ioi`: ``end``, ``IO``, ``S1``, ``S2``, ``S1+1``);
- ``dla``: the head's output at ``end`` read through the final norm (its scale frozen per prompt, `_readout`)
  along ``W_U[IO] - W_U[S]`` (logits; > 0 raises the indirect object over the subject);
- ``copying``: Wang et al.'s copying score: the residual stream after block 0 at a name's position, through the
  head's own norm, W_V and W_O, then the final norm and W_U: the share of names that land in the top 5 tokens
  (``copying_negative``: in the bottom 5, i.e. the top 5 of the negated output);
- ``repeated``: on [BOS, r, r] with r random tokens, attention from the second r_i to the first r_i
  (``duplicate``) and to r_(i+1) (``induction``), the usual prompt-free checks of the two roles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses import _readout
from circuits import forward, hooks

PAIRS = (("end", "IO"), ("end", "S1"), ("end", "S2"), ("S2", "S1"), ("S2", "S1+1"))
TOP = 5  # Wang et al.'s copying test: the name among the top 5 tokens


@dataclass
class Measured:
    """One forward pass over IOI prompts: attention between roles, each head's direct effect, the residual after
    block 0 (for the copying test) and the total logit difference."""

    attention: dict[tuple[str, str], Float[Tensor, "layer head batch"]]
    dla: Float[Tensor, "layer head batch"]
    logit_diff: Float[Tensor, " batch"]
    resid_after_block0: Float[Tensor, "batch pos d_model"]


@torch.no_grad()
def measure(model: Any, tokens: Int[Tensor, "batch pos"], spans: dict[str, Int[Tensor, " batch"]],
            answer: Int[Tensor, " batch"], foil: Int[Tensor, " batch"], pairs: Sequence[tuple[str, str]] = PAIRS
            ) -> Measured:
    """Attention from each prompt's `query` token to its `key` token for each pair, each head's output at the end
    read through the final norm along W_U[answer] - W_U[foil] (the norm's scale frozen per prompt, as
    `_readout.read_out`), the residual after block 0, in one pass."""
    rows = torch.arange(tokens.shape[0])
    end = spans["end"]
    found: dict[tuple[str, str], dict[int, Tensor]] = {pair: {} for pair in pairs}
    z: dict[int, Tensor] = {}
    kept: dict[str, Tensor] = {}

    def grab_pattern(layer: int):
        def hook(pattern: Tensor, hook: Any) -> None:
            r = rows.to(pattern.device)
            for query, key in pairs:
                q, k = spans[query].to(pattern.device), spans[key].to(pattern.device)
                found[(query, key)][layer] = pattern[r, :, q, k].float().cpu().T  # [head, batch]
        return hook

    def grab_z(layer: int):
        def hook(tensor: Tensor, hook: Any) -> None:
            z[layer] = tensor[rows.to(tensor.device), end.to(tensor.device)].detach().float().cpu()
        return hook

    def grab_resid(tensor: Tensor, hook: Any) -> None:
        kept["resid"] = tensor.detach().float().cpu()

    layers = range(model.cfg.n_layers)
    fwd = [(hooks.site(model, 0, "resid_post"), grab_resid)]
    for layer in layers:
        fwd += [(hooks.site(model, layer, "pattern"), grab_pattern(layer)),
                (hooks.site(model, layer, "z"), grab_z(layer))]
    with hooks.attached(model, fwd):
        final = forward.run_blocks(model, forward.embed(model, tokens.to(forward.input_device(model))), 0)
    final = final[rows.to(final.device), end.to(final.device)].float().cpu()
    heads = torch.stack([einops.einsum(z[layer], model.blocks[layer].attn.W_O.detach().float().cpu(),
                                       "b h e, h e d -> h b d") for layer in layers])
    scale = (final.pow(2).mean(-1) + model.cfg.eps).sqrt()
    along = _readout.directions(model, answer, centred=False) - _readout.directions(model, foil, centred=False)
    return Measured(attention={pair: torch.stack([v[layer] for layer in layers]) for pair, v in found.items()},
                    dla=_readout.direct(heads, scale, along), logit_diff=_readout.direct(final, scale, along),
                    resid_after_block0=kept["resid"])


def head_weights(model: Any, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """W_V ``[head, d_model, d_head]`` (a query head's copy of its KV head), b_V ``[head, d_head]`` and W_O
    ``[head, d_head, d_model]`` of one block, on the CPU."""
    attn = model.blocks[layer].attn
    w_v, w_o = attn.W_V.detach().float().cpu(), attn.W_O.detach().float().cpu()
    n_heads = model.cfg.n_heads
    if w_v.shape[0] != n_heads:  # grouped-query attention stored per KV head: each query head reads its group's
        w_v = w_v.repeat_interleave(n_heads // w_v.shape[0], dim=0)
    b_v = getattr(attn, "b_V", None)
    b_v = torch.zeros(w_v.shape[0], w_v.shape[2]) if b_v is None else b_v.detach().float().cpu()
    if b_v.shape[0] != n_heads:
        b_v = b_v.repeat_interleave(n_heads // b_v.shape[0], dim=0)
    return w_v, b_v, w_o


@torch.no_grad()
def copying(model: Any, names: Float[Tensor, "n d_model"], name_ids: Int[Tensor, " n"],
            heads: Sequence[tuple[int, int]]) -> dict[tuple[int, int], tuple[float, float]]:
    """Wang et al.'s copying score of each head: the share of `names` (residual after block 0 at a name's token)
    whose own token is in the top 5 of the head's OV output read as logits, and in the bottom 5 (negative copying)."""
    device = forward.input_device(model)
    w_u = model.W_U.detach().float().cpu()
    b_u = getattr(model, "b_U", None)
    b_u = torch.zeros(w_u.shape[1]) if b_u is None else b_u.detach().float().cpu()
    scores = {}
    for layer in sorted({layer for layer, _ in heads}):
        normed = model.blocks[layer].ln1(names[None].to(device))[0].float().cpu()
        w_v, b_v, w_o = head_weights(model, layer)
        for _, head in [(l, h) for l, h in heads if l == layer]:
            out = (normed @ w_v[head] + b_v[head]) @ w_o[head]
            logits = model.ln_final(out[None].to(device))[0].float().cpu() @ w_u + b_u
            top = logits.topk(TOP, dim=-1).indices
            bottom = (-logits).topk(TOP, dim=-1).indices
            scores[(layer, head)] = (float((top == name_ids[:, None]).any(-1).float().mean()),
                                     float((bottom == name_ids[:, None]).any(-1).float().mean()))
    return scores


@torch.no_grad()
def repeated(model: Any, n: int = 4, length: int = 20, seed: int = 0) -> dict[str, Float[Tensor, "layer head"]]:
    """Duplicate-token and induction attention on [BOS, r, r] (r: `length` random tokens), averaged over the second
    half's positions and `n` sequences."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.cfg.d_vocab
    r = torch.randint(1000, min(vocab, 20000), (n, length), generator=generator)  # ordinary tokens, no specials
    bos = model.tokenizer.bos_token_id
    first = torch.full((n, 1), bos if bos is not None else r[0, 0].item())
    tokens = torch.cat([first, r, r], 1)
    second = torch.arange(length + 1, 2 * length + 1)  # the second copy's positions
    found: dict[str, dict[int, Tensor]] = {"duplicate": {}, "induction": {}}

    def grab(layer: int):
        def hook(pattern: Tensor, hook: Any) -> None:
            p = pattern.float().cpu()
            found["duplicate"][layer] = p[:, :, second, second - length].mean((0, 2))
            found["induction"][layer] = p[:, :, second[:-1], second[:-1] - length + 1].mean((0, 2))
        return hook

    layers = range(model.cfg.n_layers)
    with hooks.attached(model, [(hooks.site(model, layer, "pattern"), grab(layer)) for layer in layers]):
        forward.logits(model, tokens.to(forward.input_device(model)), torch.full((n,), tokens.shape[1] - 1))
    return {kind: torch.stack([values[layer] for layer in layers]) for kind, values in found.items()}
