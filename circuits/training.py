"""One training loop: seeded, AdamW, progress bar, periodic evaluation, optional hooks (clamps).

`model` is a TransformerBridge or the plain native module it wraps. Train the plain module where no hook
is needed (4x faster); `hooks` (forward hooks active during training, e.g. clamped attention patterns)
need the bridge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits import forward
from circuits import hooks as hook_sites
from circuits.errors import InvalidOptionError

Sampler = Callable[[torch.Generator], tuple[Tensor, Tensor]]
Loss = Callable[[Tensor, Tensor], Tensor]
Evaluate = Callable[[Any], dict[str, float]]


def outputs(model: Any, inputs: Tensor) -> Tensor:
    """Full-sequence logits of a bridge or a native module, for token ids or float inputs."""
    if hasattr(model, "hook_dict"):
        return forward.logits(model, inputs)
    if inputs.is_floating_point():
        return model(inputs_embeds=inputs)
    return model(inputs)


def train(
    model: Any,
    sample: Sampler,
    loss: Loss,
    *,
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    hooks: Sequence[tuple[str, Callable]] = (),
    evaluate: Optional[Evaluate] = None,
    eval_every: int = 0,
    grad_clip: Optional[float] = 1.0,
    progress: bool = True,
    description: str = "training",
) -> list[dict[str, Union[int, float]]]:
    """Train `model` in place for `steps` AdamW steps on ``sample(generator) -> (inputs, targets)``.

    Returns the history: one dict per evaluation (``step``, ``loss`` and what `evaluate` returned).
    The model's train/eval mode is restored afterwards.
    """
    if steps < 1:
        raise InvalidOptionError(f"steps must be >= 1; got {steps}")
    if hooks and not hasattr(model, "hook_dict"):
        raise InvalidOptionError("hooks need a TransformerBridge (hook points); got a plain "
                                 f"{type(model).__name__}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    was_training = model.training
    history: list[dict[str, Union[int, float]]] = []
    bar = tqdm(range(1, steps + 1), desc=description, disable=not progress, leave=False)
    attached = hook_sites.attached(model, list(hooks)) if hooks else contextlib.nullcontext()
    device = forward.input_device(model)
    try:
        with attached:
            for step in bar:
                model.train()
                inputs, targets = sample(generator)
                value = loss(outputs(model, inputs.to(device)), targets.to(device))
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
                optimizer.step()
                if evaluate is not None and eval_every and (step % eval_every == 0 or step == steps):
                    model.eval()
                    with torch.no_grad():
                        record = {"step": step, "loss": value.item(), **evaluate(model)}
                    history.append(record)
                    bar.set_postfix({k: round(v, 3) for k, v in record.items() if k != "step"})
    finally:
        model.train(was_training)
    return history
