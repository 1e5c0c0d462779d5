"""A Llama-style Hugging Face folder (SmolLM2: RMSNorm, rotary, grouped KV heads, gated SiLU MLP) as a TransformerLens 2
``HookedTransformer`` state dict and config, by TransformerLens 2's own code: the folder our `circuits.models.bundled`
reads (``config.json`` and ``weights.pt``, the float32 state dict) loaded into ``transformers``' ``LlamaForCausalLM``
and converted by ``transformer_lens.pretrained.weight_conversions.convert_llama_weights``. Runs in `.venv-peers`
(imported by `worker.py`); reads nothing from the hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# The context the HookedTransformer is built for: its rotary tables and causal masks are n_ctx long (8192 in
# SmolLM2's config: a 64 MB mask per layer and model). Rows below n_ctx are the same for any n_ctx, and the
# benchmark's prompts are 16 tokens.
N_CTX = 256


def tl2_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """TransformerLens 2's `HookedTransformerConfig` fields for a ``LlamaForCausalLM`` config (the fields its
    `convert_hf_model_config` sets for Llama models, ``rope_theta`` as the rotary base)."""
    if hf_config.get("model_type") != "llama":
        raise ValueError(f"expected a Llama folder; got model_type {hf_config.get('model_type')!r}")
    rope = rope_parameters(hf_config)
    if rope.get("rope_type", "default") != "default" or hf_config.get("rope_scaling"):
        raise ValueError(f"rope {rope!r} / rope_scaling {hf_config.get('rope_scaling')!r}: only plain rotary is "
                         "written for TransformerLens 2 here")
    heads, kv_heads = hf_config["num_attention_heads"], hf_config["num_key_value_heads"]
    d_head = hf_config.get("head_dim") or hf_config["hidden_size"] // heads
    return dict(d_model=hf_config["hidden_size"], d_head=d_head, n_heads=heads, d_mlp=hf_config["intermediate_size"],
                n_layers=hf_config["num_hidden_layers"], n_ctx=min(N_CTX, hf_config["max_position_embeddings"]),
                eps=hf_config["rms_norm_eps"], d_vocab=hf_config["vocab_size"], act_fn=hf_config["hidden_act"],
                n_key_value_heads=kv_heads if kv_heads != heads else None, normalization_type="RMS",
                positional_embedding_type="rotary", rotary_adjacent_pairs=False, rotary_dim=d_head,
                rotary_base=rope["rope_theta"], final_rms=True, gated_mlp=True,
                original_architecture="LlamaForCausalLM")


def rope_parameters(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The rotary settings: ``rope_parameters`` (transformers 5 writes these) or the older top-level ``rope_theta``."""
    return {"rope_theta": hf_config.get("rope_theta", 10000.0), **(hf_config.get("rope_parameters") or {})}


def load(folder: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(TransformerLens 2 config fields, state dict) of the Llama model in `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    path = Path(folder)
    raw = json.loads((path / "config.json").read_text())
    fields = tl2_config(raw)
    # a container for the weights only (TransformerLens 2 computes the rotary itself); rope_theta passed for clarity:
    # transformers 4 does not read transformers 5's rope_parameters
    hf_model = LlamaForCausalLM(LlamaConfig.from_pretrained(path, rope_theta=fields["rotary_base"])).eval()
    state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and raw.get("tie_word_embeddings"))]
    if missing or unexpected:
        raise RuntimeError(f"{path}/weights.pt does not fit its config: missing {missing}, unexpected {unexpected}")
    if raw.get("tie_word_embeddings"):
        hf_model.tie_weights()
    converted = convert_llama_weights(hf_model, HookedTransformerConfig(**fields))
    return fields, {k: v.detach().float().contiguous() for k, v in converted.items()}
