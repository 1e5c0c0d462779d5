"""Running a model: the one place engines go through, for token ids and float inputs alike.

Float inputs ``[batch, pos, d_model]`` are the residual stream entering block 0: they skip the token
and positional embeddings (continuous-input tasks such as ICL regression build their own "tokens").
`run_from` runs ``model.blocks[k:]`` itself, because TransformerLens 4.3's ``start_at_layer`` still
computes every layer; it unembeds only the read-out positions, which dominates the cost on large
vocabularies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits._task import Inputs

Residual = Float[Tensor, "batch pos d_model"]


def input_device(model: Any) -> torch.device:
    """Where inputs go: ``model.cfg.device``. A model spread over devices (accelerate's ``device_map``,
    TransformerBridge's ``n_devices``) takes its inputs there, wherever its first parameter happens to
    live; a module without a configured device falls back to its first parameter's."""
    device = getattr(getattr(model, "cfg", None), "device", None)
    return torch.device(device) if device is not None else next(model.parameters()).device


@contextmanager
def readable_weights(component: torch.nn.Module) -> Iterator[None]:
    """Inside, the weights of `component` that accelerate offloaded are loaded on their execution device, so an
    engine can read ``W_O``, ``W_Q``, ... of a model loaded with a ``device_map`` that has ``"disk"`` targets: such
    weights are meta placeholders, filled only while their module runs. Tensors read inside stay valid after; the
    placeholders come back on exit. A no-op for weights held in memory."""
    from accelerate.utils import align_module_device, has_offloaded_params  # a TransformerLens dependency

    with ExitStack() as stack:
        for module in component.modules():  # accelerate hooks each offloaded submodule separately
            # vars() first: a bridge component's own __getattr__ makes a missing attribute slow to look up
            if "_hf_hook" in vars(module) and has_offloaded_params(module):
                stack.enter_context(align_module_device(module))
        yield


def embed(model: Any, inputs: Inputs) -> Residual:
    """The residual stream entering block 0 (inputs are moved to `input_device` first)."""
    inputs = inputs.to(input_device(model))
    if inputs.is_floating_point():
        return inputs
    return model(inputs, stop_at_layer=0)


def _block_kwargs(model: Any, residual: Tensor) -> dict[str, Any]:
    """Keyword arguments a block needs beyond the residual (rotary position embeddings for HF models)."""
    rotary = getattr(model, "rotary_emb", None)
    if rotary is None:
        return {}
    positions = torch.arange(residual.shape[1], device=residual.device)[None]
    return {"position_embeddings": rotary(residual, positions), "position_ids": positions}


def run_blocks(model: Any, residual: Residual, start: int, stop: Optional[int] = None) -> Residual:
    """Run ``model.blocks[start:stop]`` on `residual` (hooks on those blocks fire as usual)."""
    kwargs = _block_kwargs(model, residual)
    for block in model.blocks[start:stop]:
        out = block(residual, **kwargs)
        residual = out[0] if isinstance(out, tuple) else out
    return residual


def unembed(model: Any, residual: Residual, position: Optional[Int[Tensor, " batch"]] = None) -> Tensor:
    """Final norm and unembedding; at one position per prompt (``[batch, vocab]``) when `position` is given.
    The logits come back on `input_device`, with the prompts, as a model split over devices returns them."""
    if position is not None:
        residual = residual[torch.arange(residual.shape[0], device=residual.device), position.to(residual.device)]
    return model.unembed(model.ln_final(residual)).to(input_device(model))


def run_from(model: Any, residual: Residual, start: int, position: Optional[Tensor] = None) -> Tensor:
    """Logits from the residual stream entering block `start` (``start == n_layers``: just unembed)."""
    return unembed(model, run_blocks(model, residual, start), position)


def logits(model: Any, inputs: Inputs, position: Optional[Int[Tensor, " batch"]] = None) -> Tensor:
    """Logits of a full forward pass, for token ids or float inputs, optionally at read-out positions only."""
    return run_from(model, embed(model, inputs), 0, position)

