"""Models for the reference-parity tests (CD-T, edge attribution) that `circuits.models.ToyConfig` does not describe (tanh GELU, LayerNorm eps
1e-8, gated MLPs): TransformerLens-native modules built from a full config and wrapped in a bridge."""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformer_lens.config import TransformerBridgeConfig

from circuits import _compat


def native_bridge(perturb: float = 0.0, seed: int = 0, **fields: Any) -> Any:
    """A seeded random native model; with `perturb`, every parameter (biases and norm weights included)
    gets Gaussian noise of that scale, so no bias is zero."""
    cfg = TransformerBridgeConfig(seed=seed, model_name="cdt_test", **fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _compat.NativeModel(cfg)
        _compat.initialize_native_model(module, cfg)
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(perturb * torch.randn_like(parameter))
    bridge = _compat.build_bridge_from_module(module, architecture="TransformerLensNative",
                                              tl_config=copy.deepcopy(module.cfg), model_name="cdt_test")
    return bridge.eval()


def load_tl2_weights(bridge: Any, state: dict[str, torch.Tensor]) -> None:
    """Copy a TransformerLens 2 state dict (``blocks.0.attn.W_Q`` ...) into a native bridge's module."""
    module = _compat.native_module(bridge)
    cfg = bridge.cfg
    own = dict(module.named_parameters())

    def put(name: str, value: torch.Tensor) -> None:
        matches = [k for k in own if k.replace("._original_component", "") == name]
        assert len(matches) == 1, (name, matches)
        with torch.no_grad():
            own[matches[0]].copy_(value)

    put("tok_embed.weight", state["embed.W_E"])
    put("pos.weight", state["pos_embed.W_pos"])
    for l in range(cfg.n_layers):
        tl, nat = f"blocks.{l}", f"layers.{l}"
        norms = [("ln1", "ln1")] + ([] if cfg.attn_only else [("ln2", "ln2")])
        for a, b in norms:
            put(f"{nat}.{b}.weight", state[f"{tl}.{a}.w"])
            put(f"{nat}.{b}.bias", state[f"{tl}.{a}.b"])
        for x in "QKV":
            w = state[f"{tl}.attn.W_{x}"]  # [head, d_model, d_head] -> [head * d_head, d_model]
            put(f"{nat}.attn.{x.lower()}.weight", w.permute(0, 2, 1).reshape(-1, w.shape[1]))
            put(f"{nat}.attn.{x.lower()}.bias", state[f"{tl}.attn.b_{x}"].reshape(-1))
        w_o = state[f"{tl}.attn.W_O"]  # [head, d_head, d_model] -> [d_model, head * d_head]
        put(f"{nat}.attn.o.weight", w_o.reshape(-1, w_o.shape[-1]).T)
        put(f"{nat}.attn.o.bias", state[f"{tl}.attn.b_O"])
        if not cfg.attn_only:
            put(f"{nat}.mlp.fc_in.weight", state[f"{tl}.mlp.W_in"].T)
            put(f"{nat}.mlp.fc_in.bias", state[f"{tl}.mlp.b_in"])
            put(f"{nat}.mlp.fc_out.weight", state[f"{tl}.mlp.W_out"].T)
            put(f"{nat}.mlp.fc_out.bias", state[f"{tl}.mlp.b_out"])
    put("ln_out.weight", state["ln_final.w"])
    put("ln_out.bias", state["ln_final.b"])
    put("head.weight", state["unembed.W_U"].T)
    assert not state["unembed.b_U"].any(), "the native unembedding has no bias"
