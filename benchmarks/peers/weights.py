"""Our models' weights as TransformerLens 2 ``HookedTransformer`` state dicts and configs (the peers' side loads them).

The inverse of `tests.cdt_models.load_tl2_weights`: a native toy bridge's module parameters renamed and reshaped
to TransformerLens 2's (``blocks.0.attn.W_Q`` ``[head, d_model, d_head]`` ...). The worker checks that its
``HookedTransformer`` gives our logits before any timing.
"""

from __future__ import annotations

from typing import Any

import torch

from circuits import _compat


def tl2_config(bridge: Any) -> dict[str, Any]:
    """The `HookedTransformerConfig` fields that describe `bridge` (JSON-ready)."""
    cfg = bridge.cfg
    if cfg.normalization_type != "LN" or cfg.positional_embedding_type != "standard":
        raise ValueError(f"only LayerNorm models with learned positions are written for the peers; got "
                         f"normalization_type={cfg.normalization_type!r}, positional={cfg.positional_embedding_type!r}")
    return dict(n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
                d_mlp=None if cfg.attn_only else cfg.d_mlp, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, act_fn=cfg.act_fn,
                normalization_type="LN", eps=cfg.eps, attn_only=cfg.attn_only, positional_embedding_type="standard")


def tl2_state(bridge: Any) -> dict[str, torch.Tensor]:
    """`bridge`'s weights under TransformerLens 2's names and shapes (contiguous copies, for safetensors)."""
    module = _compat.native_module(bridge)
    own = {name.replace("._original_component", ""): p.detach() for name, p in module.named_parameters()}
    cfg = bridge.cfg
    h, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    state = {"embed.W_E": own["tok_embed.weight"], "pos_embed.W_pos": own["pos.weight"]}
    for layer in range(cfg.n_layers):
        tl, nat = f"blocks.{layer}", f"layers.{layer}"
        for norm in ("ln1",) + (() if cfg.attn_only else ("ln2",)):
            state[f"{tl}.{norm}.w"] = own[f"{nat}.{norm}.weight"]
            state[f"{tl}.{norm}.b"] = own[f"{nat}.{norm}.bias"]
        for x in "QKV":  # [head * d_head, d_model] -> [head, d_model, d_head]
            state[f"{tl}.attn.W_{x}"] = own[f"{nat}.attn.{x.lower()}.weight"].reshape(h, dh, d).permute(0, 2, 1)
            state[f"{tl}.attn.b_{x}"] = own[f"{nat}.attn.{x.lower()}.bias"].reshape(h, dh)
        state[f"{tl}.attn.W_O"] = own[f"{nat}.attn.o.weight"].T.reshape(h, dh, d)  # [d_model, head*d_head]
        state[f"{tl}.attn.b_O"] = own[f"{nat}.attn.o.bias"]
        if not cfg.attn_only:
            state[f"{tl}.mlp.W_in"] = own[f"{nat}.mlp.fc_in.weight"].T
            state[f"{tl}.mlp.b_in"] = own[f"{nat}.mlp.fc_in.bias"]
            state[f"{tl}.mlp.W_out"] = own[f"{nat}.mlp.fc_out.weight"].T
            state[f"{tl}.mlp.b_out"] = own[f"{nat}.mlp.fc_out.bias"]
    state["ln_final.w"] = own["ln_out.weight"]
    state["ln_final.b"] = own["ln_out.bias"]
    state["unembed.W_U"] = own["head.weight"].T
    state["unembed.b_U"] = torch.zeros(cfg.d_vocab_out if cfg.d_vocab_out > 0 else cfg.d_vocab)
    return {k: v.contiguous().clone() for k, v in state.items()}
