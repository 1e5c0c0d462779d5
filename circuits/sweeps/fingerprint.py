"""What a sweep cell ran on, as hashes: the prompts (the task's batch for the cell's ``n`` and seed) and the model's
weights. A cell is done only for the prompts and weights it recorded: a task whose prompts changed (an edited
prompt file, a changed generator) or a model whose weights changed (retrained, another checkpoint in the folder) is
run again instead of serving its old graph (`circuits.sweep`)."""

from __future__ import annotations

import hashlib
import warnings
from contextlib import nullcontext
from typing import Any

import torch

from circuits import forward
from circuits._task import PromptBatch

BATCH_FIELDS = ("clean", "corrupted", "answer", "position", "foil")  # clean_logprobs follow from these and the weights


def _update(digest: Any, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def prompts(batch: PromptBatch) -> str:
    """A hash of a batch's prompts, answers, read-out positions and foils (exact bytes, dtypes and shapes)."""
    digest = hashlib.sha256()
    for name in BATCH_FIELDS:
        value = getattr(batch, name)
        if value is not None:
            _update(digest, name, value)
    return digest.hexdigest()[:16]


def task_prompts(model: Any, task: Any, n: int, seed: int) -> str:
    """The hash of the batch `task` gives `model` for `n` and `seed` (as an engine's run would ask for it)."""
    from circuits.engines import base

    with base.session(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a task with fewer prompts than asked for: the engine's run warns once
        return prompts(base.task_batch(model, task, n, seed))


def weights(model: Any) -> str:
    """A hash of every parameter of `model` by name (exact bytes; offloaded weights are read where they lie)."""
    digest = hashlib.sha256()
    for module_name, module in model.named_modules():  # one module's offloaded weights in memory at a time
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        with forward.readable_weights(module) if any(p.device.type == "meta" for _, p in own) else nullcontext():
            for name, parameter in sorted(module.named_parameters(recurse=False), key=lambda item: item[0]):
                _update(digest, f"{module_name}.{name}", parameter)
    return digest.hexdigest()[:16]
