"""What CD-T reads from a TransformerLens 4 bridge, and one block's propagation on (rel, irrel) parts.

Weights come from the bridge's per-layer views (``blocks[l].attn.W_Q``, ``mlp.W_in``, ...), norms and
rotary tables from the modules the bridge wraps (native toy models and Hugging Face Llama-style models
such as SmolLM2). A model with a part no rule covers (parallel attention and MLP, soft-capping, q/k
norms, an activation other than GELU in a plain MLP or SiLU in a gated one, ...) is refused with an
`IncompatibleModelError` naming the missing rule, before any work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from circuits import _compat, forward
from circuits.engines.cdt import rules
from circuits.engines.cdt.rules import Parts
from circuits.errors import IncompatibleModelError

PLAIN_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact (erf) GELU, the native toy models' default
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # the tanh form the reference hard-codes
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
GATED_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"silu": F.silu, "swish": F.silu}


def missing_rule(what: str) -> IncompatibleModelError:
    return IncompatibleModelError(f"CD-T has no rule for {what}; expected a sequential pre-norm transformer with "
                                  "LayerNorm or RMSNorm, GELU or SwiGLU MLPs, learned or rotary positions")


@dataclass(frozen=True)
class Norm:
    kind: str  # "LN", "RMS" or "none"
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    eps: float

    def __call__(self, parts: Parts) -> Parts:
        if self.kind == "LN":
            return rules.layer_norm(parts, self.weight, self.bias, self.eps)
        if self.kind == "RMS":
            return rules.rms_norm(parts, self.weight, self.eps)
        return parts


def on_device(parts: Parts, device: torch.device) -> Parts:
    """Both parts on `device`: on a model spread over devices, each block computes where its weights lie."""
    return tuple(None if t is None else t.to(device) for t in parts)  # type: ignore[return-value]


def cast(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    return t if t is None or dtype is None else t.to(dtype)


def read_norm(component: Any, dtype: Optional[torch.dtype] = None) -> Norm:
    module = _compat.original(component)
    name = type(module).__name__
    if isinstance(module, torch.nn.Identity):
        return Norm("none", None, None, 0.0)
    eps = getattr(module, "eps", None)
    eps = getattr(module, "variance_epsilon", None) if eps is None else eps
    weight, bias = cast(getattr(module, "weight", None), dtype), cast(getattr(module, "bias", None), dtype)
    if isinstance(module, torch.nn.LayerNorm) or name in ("NativeLayerNormPre", "LayerNormPre"):
        return Norm("LN", weight, bias, float(eps))
    if "RMSNorm" in name and eps is not None:
        return Norm("RMS", weight, None, float(eps))
    raise missing_rule(f"the normalisation {name}")


@dataclass(frozen=True)
class Layer:
    """One block's weights, in TransformerLens orientation, and the device they lie on (where the block computes)."""

    device: torch.device
    ln1: Norm
    w_q: Tensor  # [head, d_model, d_head]
    b_q: Optional[Tensor]  # [head, d_head]
    w_k: Tensor  # [kv_head, d_model, d_head]
    b_k: Optional[Tensor]
    w_v: Tensor
    b_v: Optional[Tensor]
    w_o: Tensor  # [head, d_head, d_model]
    b_o: Optional[Tensor]  # [d_model]
    scale: float  # multiplies q k^T
    rope: Optional[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]]  # (q, k) [batch, head, pos, d_head] -> rotated
    mask: Optional[Tensor]  # [pos, pos], True where a query may not look
    ln2: Optional[Norm]
    mlp: Optional[dict[str, Any]]  # w_in, b_in, w_out, b_out, w_gate, act, gated


def read_layer(model: Any, layer: int, n_pos: int, dtype: Optional[torch.dtype] = None) -> Layer:
    """Block `layer`'s weights (cast to `dtype` when given), also when accelerate offloaded them."""
    block = model.blocks[layer]
    attn = block.attn
    with forward.readable_weights(block):
        mlp = None if model.cfg.attn_only else read_mlp(model, block.mlp, dtype)
        weights = {name: cast(getattr(attn, name), dtype) for name in ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O")}
        device = weights["W_Q"].device
        return Layer(device=device, ln1=read_norm(block.ln1, dtype), w_q=weights["W_Q"], b_q=weights["b_Q"],
                     w_k=weights["W_K"], b_k=weights["b_K"], w_v=weights["W_V"], b_v=weights["b_V"], w_o=weights["W_O"],
                     b_o=weights["b_O"], scale=attention_scale(attn), rope=rotary(model, attn, n_pos, device),
                     mask=attention_mask(model, attn, n_pos, device),
                     ln2=None if mlp is None else read_norm(block.ln2, dtype), mlp=mlp)


def read_mlp(model: Any, mlp: Any, dtype: Optional[torch.dtype] = None) -> dict[str, Any]:
    act = (model.cfg.act_fn or "").lower()
    gated = getattr(mlp, "W_gate", None) is not None
    table = GATED_ACTIVATIONS if gated else PLAIN_ACTIVATIONS
    if act not in table:
        kind = "gated MLP" if gated else "MLP"
        raise missing_rule(f"the activation {act!r} in a {kind} (rules: {sorted(table)})")
    if getattr(_compat.original(mlp), "ln", None) is not None:
        raise missing_rule("a LayerNorm inside the MLP (SoLU-LN)")
    weights = {name: cast(getattr(mlp, name, None), dtype) for name in ("W_in", "b_in", "W_out", "b_out", "W_gate", "b_gate")}
    return dict(w_in=weights["W_in"], b_in=weights["b_in"], w_out=weights["W_out"], b_out=weights["b_out"],
                w_gate=weights["W_gate"], b_gate=weights["b_gate"], act=table[act], gated=gated)


def attention_scale(attn: Any) -> float:
    module = _compat.original(attn)
    if getattr(module, "attn_scores_soft_cap", 0) > 0 or getattr(module, "attn_logit_softcapping", None):
        raise missing_rule("soft-capped attention scores")
    if any(name in attn._modules for name in ("q_norm", "k_norm", "gate")) or getattr(module, "sinks", None) is not None:
        raise missing_rule("q/k norms, gated attention or attention sinks")
    if hasattr(module, "scaling"):  # Hugging Face attention multiplies
        return float(module.scaling)
    if hasattr(module, "scale"):  # TransformerLens-native attention divides
        return 1.0 / float(module.scale)
    return 1.0 / math.sqrt(attn.W_Q.shape[-1])


def rotary(model: Any, attn: Any, n_pos: int, device: torch.device):
    """RoPE as a function of (q, k) ``[batch, head, pos, d_head]``: linear, so applied to each part."""
    if (model.cfg.positional_embedding_type or "standard") != "rotary":
        return None
    native = getattr(_compat.original(attn), "rotary", None)
    if native is not None:
        return native.apply_rope
    rotary_emb = getattr(model, "rotary_emb", None)
    cfg = model.cfg
    if rotary_emb is None or getattr(cfg, "rotary_adjacent_pairs", False) or getattr(cfg, "rotary_interleaved_cos_sin", False):
        raise missing_rule("this model's rotary embedding (supported: TransformerLens-native and Llama rotate-half)")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    positions = torch.arange(n_pos, device=device)[None]
    cos, sin = (t.to(device) for t in rotary_emb(torch.zeros(1, n_pos, cfg.d_model, device=device), positions))
    if cos.shape[-1] != attn.W_Q.shape[-1]:
        raise missing_rule("partial rotary embeddings")
    return lambda q, k: apply_rotary_pos_emb(q, k, cos, sin)


def check_model(model: Any) -> None:
    """Typed errors for architectures the rules do not cover (before any work)."""
    cfg = model.cfg
    if getattr(cfg, "parallel_attn_mlp", False):
        raise missing_rule("parallel attention and MLP blocks")
    if getattr(cfg, "output_logits_soft_cap", -1.0) > 0:
        raise missing_rule("soft-capped logits")
    kind = (cfg.positional_embedding_type or "standard")
    if kind not in ("standard", "rotary"):
        raise missing_rule(f"positional embeddings of type {kind!r}")
    read_norm(model.ln_final)
    if not cfg.attn_only:
        with forward.readable_weights(model.blocks[0].mlp):
            read_mlp(model, model.blocks[0].mlp)
    attention_scale(model.blocks[0].attn)


# --- one block ------------------------------------------------------------------------------------------
def per_head(weight: Tensor):
    """x [batch, pos, d_model] -> x through per-head weights [head, d_model, d_head], [batch, head, pos, d_head]."""
    n_heads, d_model, d_head = weight.shape
    flat = weight.permute(1, 0, 2).reshape(d_model, n_heads * d_head)  # one matmul for every head
    return lambda x: (x @ flat).view(*x.shape[:-1], n_heads, d_head).transpose(-2, -3)


def attention_block(layer: Layer, parts: Parts, total: Optional[Tensor] = None) -> Parts:
    """ln1 and attention up to z: z parts ``[batch, pos, head, d_head]``. `total`: the real z, when known.
    With `total` known and no q/k/v biases to split, the irrel q/k/v are never needed and not computed."""
    normed = layer.ln1(parts)
    weights = ((layer.w_q, layer.b_q), (layer.w_k, layer.b_k), (layer.w_v, layer.b_v))
    if total is None or any(b is not None for _, b in weights):
        q, k, v = (rules.linear(normed, per_head(w), None if b is None else b[None, :, None, :]) for w, b in weights)
    else:
        q, k, v = ((per_head(w)(normed[0]), None) for w, _ in weights)
    if layer.rope is not None:
        rel = layer.rope(q[0], k[0])
        irrel = (None, None) if q[1] is None else layer.rope(q[1], k[1])
        q, k = (rel[0], irrel[0]), (rel[1], irrel[1])
    repeats = layer.w_q.shape[0] // layer.w_k.shape[0]
    if repeats > 1:  # grouped-query attention: a KV head's parts are shared by its group of query heads
        k = tuple(None if t is None else t.repeat_interleave(repeats, dim=1) for t in k)
        v = tuple(None if t is None else t.repeat_interleave(repeats, dim=1) for t in v)
    z = rules.attention(q, k, v, layer.scale, layer.mask, None if total is None else total.transpose(1, 2))
    return z[0].transpose(1, 2), z[1].transpose(1, 2)


Totals = dict[str, Tensor]  # the real (total) output of each bias-free linear map of a block, by name


def mapped(name: str, parts: Parts, apply: Callable[[Tensor], Tensor], bias: Optional[Tensor],
           totals: Optional[Totals], record: Optional[Totals]) -> Parts:
    """`rules.linear`, using the known total map (`totals`) or, on the real pass, recording it."""
    if record is not None:
        record[name] = apply(parts[0] + parts[1])
        totals = record
    return rules.linear(parts, apply, bias, None if totals is None else totals[name])


def finish_block(layer: Layer, resid: Parts, z: Parts, totals: Optional[Totals] = None,
                 record: Optional[Totals] = None) -> Parts:
    """W_O (bias split on the output summed over heads), the residual add, and the MLP. `totals`: the
    real outputs of the block's linear maps (from the real pass, which fills `record`)."""
    w_o = layer.w_o.reshape(-1, layer.w_o.shape[-1])  # [head * d_head, d_model]: the sum over heads in one matmul
    out = mapped("o", z, lambda t: t.flatten(-2) @ w_o, layer.b_o, totals, record)
    mid = (resid[0] + out[0], resid[1] + out[1])
    if layer.mlp is None:
        return mid
    mlp = layer.mlp
    normed = layer.ln2(mid)
    matmul = lambda w: (lambda t: t @ w)  # noqa: E731
    if mlp["gated"]:
        # No sign rule on the gate and up projections: the gated rule's irrel is a product of irrel parts,
        # not a linear split (the rule stays after W_out and the residual add, as in plain MLPs).
        gate = mapped("gate", normed, matmul(mlp["w_gate"]), mlp["b_gate"], totals, record)
        up = mapped("in", normed, matmul(mlp["w_in"]), mlp["b_in"], totals, record)
        hidden = rules.gated(gate, up, mlp["act"])
    else:
        pre = rules.sign_conflict(mapped("in", normed, matmul(mlp["w_in"]), mlp["b_in"], totals, record))
        hidden = rules.activation(pre, mlp["act"])
    out = rules.sign_conflict(mapped("out", hidden, matmul(mlp["w_out"]), mlp["b_out"], totals, record))
    return rules.sign_conflict((mid[0] + out[0], mid[1] + out[1]))


def unembed(model: Any, parts: Parts, totals: Optional[Totals] = None, record: Optional[Totals] = None) -> Parts:
    """Final norm and unembedding, computed on the unembedding's device."""
    dtype = parts[0].dtype
    unembedding = model.unembed
    with forward.readable_weights(model.ln_final), forward.readable_weights(unembedding):
        norm = read_norm(model.ln_final, dtype)
        w_u, b_u = unembedding.W_U.to(dtype), cast(getattr(unembedding, "b_U", None), dtype)
    normed = on_device(norm(parts), w_u.device)
    return mapped("unembed", normed, lambda t: t @ w_u, b_u, totals, record)


def attention_mask(model: Any, attn: Any, n_pos: int, device: torch.device) -> Optional[Tensor]:
    """The causal mask; a native module's own buffer when it has one (a task may have edited it, e.g.
    icl_regression's query that may not attend to itself)."""
    if model.cfg.attention_dir != "causal":
        return None
    own = getattr(_compat.original(attn), "causal_mask", None)
    if own is not None:
        return own[:n_pos, :n_pos].to(device)
    return torch.ones(n_pos, n_pos, dtype=torch.bool, device=device).triu(1)
