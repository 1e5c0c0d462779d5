"""Clamps: activations fixed or removed throughout training ("artificial optogenetics", Singh et al. 2024).

A clamp is a frozen dataclass with two methods:

- ``check(cfg, inputs)``: raise a typed error (naming the bad value) if the clamp does not fit a model
  config (``n_layers``, ``n_heads``, ``d_head``, ``n_ctx``...) or a batch of the task's inputs
  (token ids ``[batch, pos]`` or float inputs ``[batch, pos, d_model]``). Called before the first step.
- ``install(module, state)``: register torch forward hooks on a plain native module (`models.native`) and
  return their handles. ``state`` (a `ClampState`) holds the current forward pass's inputs and the residual
  stream entering block 0, captured by `attached` before any clamp runs.

Gradients flow through everything a clamp does not replace: a fixed pattern row is a constant, an ablated
head's output is zero, and every other head, weight and position trains as usual. Clamps on the same layer's
pattern compose in the order given. Users write their own clamps the same way (see `PatternClamp`).

The hooks sit on the native module's own submodules (its attention's ``pattern_fn`` argument, the output
projection's input, the key projection's output), so clamped training runs at the speed of the plain
module, not of the TransformerBridge (`benchmarks/clamped_training.py`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from circuits import _compat, models
from circuits.errors import IncompatibleModelError, InvalidBatchError, InvalidOptionError
from circuits.nodes import Head

Pattern = Float[Tensor, "batch head query key"]


@dataclass
class ClampState:
    """What clamps read during a forward pass: the inputs and the residual stream entering block 0."""

    inputs: Optional[Tensor] = None
    embedding: Optional[Tensor] = None


@runtime_checkable
class Clamp(Protocol):
    def check(self, cfg: Any, inputs: Tensor) -> None: ...

    def install(self, module: Any, state: ClampState) -> list[RemovableHandle]: ...


# --- shared checks --------------------------------------------------------------------------------------
def check_inputs(cfg: Any, inputs: Tensor, what: str) -> None:
    """Prompts a pattern clamp can fit: ``[batch, pos]`` ids or ``[batch, pos, d_model]`` floats, 2 <= pos <= n_ctx."""
    if inputs.ndim not in (2, 3) or (inputs.ndim == 3 and inputs.shape[-1] != cfg.d_model):
        raise InvalidBatchError(f"{what} needs inputs [batch, pos] (ids) or [batch, pos, d_model={cfg.d_model}] "
                                f"(floats); got shape {tuple(inputs.shape)}")
    n_pos = inputs.shape[1]
    if not 2 <= n_pos <= cfg.n_ctx:
        raise InvalidBatchError(f"{what} fixes [pos, pos] patterns; prompts have pos={n_pos}, expected "
                                f"2 <= pos <= n_ctx={cfg.n_ctx}")


def _attention(module: Any, layer: int) -> Any:
    return models.native_attention(module)[layer]


# --- pattern clamps -------------------------------------------------------------------------------------
class PatternClamp:
    """Base of clamps that fix (some rows of) one head's attention pattern.

    Subclasses define ``head`` and ``rows(state, n_pos) -> (fixed [batch, pos, pos], keep [batch, pos] bool)``:
    rows where ``keep`` is True take ``fixed``, the others keep the model's own pattern.
    """

    head: Union[str, Head]

    def rows(self, state: ClampState, n_pos: int, device: torch.device) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def check(self, cfg: Any, inputs: Tensor) -> None:
        Head.in_model(cfg, self.head, what=f"head for {type(self).__name__}")
        check_inputs(cfg, inputs, type(self).__name__)

    def apply(self, pattern: Pattern, state: ClampState, h: int) -> Pattern:
        """`pattern` with head `h`'s rows replaced where ``keep`` (a new tensor: autograd sees the fixed rows as
        constants and the other heads and rows unchanged)."""
        fixed, keep = self.rows(state, pattern.shape[-1], pattern.device)
        clamped = torch.where(keep[..., None], fixed.to(pattern.dtype), pattern[:, h])
        return torch.cat([pattern[:, :h], clamped[:, None], pattern[:, h + 1:]], dim=1)

    def install(self, module: Any, state: ClampState) -> list[RemovableHandle]:
        head = Head.parse(self.head)
        attention = _attention(module, head.layer)

        def inject(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            earlier = kwargs.get("pattern_fn")  # another clamp on this layer, or the bridge's hook_pattern

            def pattern_fn(pattern: Tensor) -> Tensor:
                clamped = self.apply(pattern, state, head.head)
                return earlier(clamped) if earlier is not None else clamped

            return args, {**kwargs, "pattern_fn": pattern_fn}

        return [attention.register_forward_pre_hook(inject, with_kwargs=True)]


@dataclass(frozen=True)
class PreviousToken(PatternClamp):
    """The head attends to the previous token (weight `strength`, the rest to itself; position 0 to itself)."""

    head: Union[str, Head]
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise InvalidOptionError(f"PreviousToken.strength must lie in [0, 1]; got {self.strength}")

    def rows(self, state: ClampState, n_pos: int, device: torch.device) -> tuple[Tensor, Tensor]:
        eye = torch.eye(n_pos, device=device)
        previous = torch.diag(torch.ones(n_pos - 1, device=device), -1)
        fixed = self.strength * previous + (1 - self.strength) * eye
        fixed[0, 0] = 1.0
        n = state.inputs.shape[0]
        return fixed.expand(n, n_pos, n_pos), torch.ones(n, n_pos, dtype=torch.bool, device=device)


@dataclass(frozen=True)
class Match(PatternClamp):
    """An induction head's query row fixed on the token after the earlier occurrence of the current token.

    Token ids: every row whose token occurred before attends uniformly to the positions just after its earlier
    occurrences (the right answer's source); other rows keep the model's pattern. Float inputs (no ids to
    compare): the last row attends to the position after the earlier input most similar in direction (cosine),
    e.g. the label after the query's exemplar class in the few-shot task.
    """

    head: Union[str, Head]

    def rows(self, state: ClampState, n_pos: int, device: torch.device) -> tuple[Tensor, Tensor]:
        inputs = state.inputs
        n = inputs.shape[0]
        earlier = torch.ones(n_pos, n_pos, dtype=torch.bool, device=device).tril(-1)  # j < i
        if inputs.is_floating_point():
            unit = torch.nn.functional.normalize(inputs.detach(), dim=-1)
            similarity = torch.einsum("nd,njd->nj", unit[:, -1], unit[:, :-1])
            source = similarity.argmax(-1) + 1  # the position after the best match
            fixed = torch.zeros(n, n_pos, n_pos, device=device)
            fixed[torch.arange(n, device=device), -1, source] = 1.0
            keep = torch.zeros(n, n_pos, dtype=torch.bool, device=device)
            keep[:, -1] = True
            return fixed, keep
        same = (inputs[:, :, None] == inputs[:, None, :]) & earlier  # [n, i, j]: token j == token i, j < i
        after = torch.zeros_like(same)
        after[:, :, 1:] = same[:, :, :-1]  # attend to j + 1 (<= i, so still causal)
        count = after.sum(-1, keepdim=True)
        return after.float() / count.clamp(min=1), count[..., 0] > 0


# --- output clamps --------------------------------------------------------------------------------------
def _head_slice(cfg: Any, head: Head) -> slice:
    return slice(head.head * cfg.d_head, (head.head + 1) * cfg.d_head)


@dataclass(frozen=True)
class Ablate:
    """The head's output removed: its ``z`` (pattern-weighted values) set to zero (``mode="zero"``) or to its
    mean over the batch and positions of the current forward pass, held constant (``mode="mean"``)."""

    head: Union[str, Head]
    mode: str = "zero"

    def __post_init__(self) -> None:
        if self.mode not in ("zero", "mean"):
            raise InvalidOptionError(f"Ablate.mode={self.mode!r}; expected 'zero' or 'mean'")

    def check(self, cfg: Any, inputs: Tensor) -> None:
        Head.in_model(cfg, self.head, what="head for Ablate")

    def install(self, module: Any, state: ClampState) -> list[RemovableHandle]:
        head = Head.parse(self.head)
        part = _head_slice(module.cfg, head)
        mean = self.mode == "mean"

        def ablate(_module: Any, args: tuple) -> tuple:
            z = args[0]
            replacement = z[..., part].detach().mean(dim=(0, 1), keepdim=True).expand_as(z[..., part]) if mean \
                else torch.zeros_like(z[..., part])
            return (torch.cat([z[..., : part.start], replacement, z[..., part.stop:]], dim=-1), *args[1:])

        return [_attention(module, head.layer).o.register_forward_pre_hook(ablate)]


@dataclass(frozen=True)
class Copy:
    """A perfect copier: the head's output (OV circuit) replaced by the pattern-weighted embedding of the
    attended tokens — the residual stream entering block 0 (token plus position embedding; the float inputs
    themselves for float-input models). Its pattern still trains (or is clamped by a pattern clamp)."""

    head: Union[str, Head]

    def check(self, cfg: Any, inputs: Tensor) -> None:
        Head.in_model(cfg, self.head, what="head for Copy")

    def install(self, module: Any, state: ClampState) -> list[RemovableHandle]:
        head = Head.parse(self.head)
        attention = _attention(module, head.layer)
        handles = Ablate(head).install(module, state)  # the head's own OV output removed ...

        def add_copy(_module: Any, _args: tuple, output: tuple) -> tuple:
            out, pattern = output  # ... and the embeddings it attends to added in its place
            return out + torch.einsum("nij,njd->nid", pattern[:, head.head], state.embedding), pattern

        handles.append(attention.register_forward_hook(add_copy))
        return handles


@dataclass(frozen=True)
class Layer0:
    """Layer-`reader` patterns computed as if the layers below were a perfect previous-token copier: its keys
    are computed from the previous position's residual (position 0 keeps its own), and the layers below add
    nothing to the residual stream (their attention output is zero), so layer `reader` reads the embeddings."""

    reader: int = 1

    def check(self, cfg: Any, inputs: Tensor) -> None:
        if not 1 <= self.reader < cfg.n_layers:
            raise InvalidOptionError(f"Layer0.reader={self.reader} must be a layer above layer 0 of a model with "
                                     f"n_layers={cfg.n_layers}; expected 1 <= reader < {cfg.n_layers}")
        check_inputs(cfg, inputs, "Layer0")

    def install(self, module: Any, state: ClampState) -> list[RemovableHandle]:
        attention = models.native_attention(module)

        def silence(_module: Any, _args: tuple, output: tuple) -> tuple:
            out, pattern = output
            return torch.zeros_like(out), pattern

        def shift_keys(_module: Any, _args: tuple, keys: Tensor) -> Tensor:
            return torch.cat([keys[:, :1], keys[:, :-1]], dim=1)

        handles = [attention[layer].register_forward_hook(silence) for layer in range(self.reader)]
        handles.append(attention[self.reader].k.register_forward_hook(shift_keys))
        return handles


# --- installing -----------------------------------------------------------------------------------------
def check_all(clamps: Sequence[Any], cfg: Any, inputs: Tensor) -> None:
    """Every clamp checked against the config and a batch of inputs (typed errors, before any training)."""
    for clamp in clamps:
        if not isinstance(clamp, Clamp):
            raise InvalidOptionError(f"{clamp!r} is not a clamp (expected an object with check(cfg, inputs) and "
                                     "install(module, state), e.g. circuits.clamps.Ablate('L1H0'))")
        clamp.check(cfg, inputs)
    pattern_heads = [str(Head.parse(c.head)) for c in clamps if isinstance(c, PatternClamp)]
    if len(set(pattern_heads)) != len(pattern_heads):
        raise InvalidOptionError(f"two pattern clamps fix the same head: {sorted(pattern_heads)}")


def _inputs_of(args: tuple, kwargs: dict) -> Tensor:
    for value in (*args[:1], kwargs.get("input_ids"), kwargs.get("inputs_embeds")):
        if value is not None:
            return value
    raise IncompatibleModelError("a clamped forward pass got neither input_ids nor inputs_embeds")


@contextmanager
def attached(module: Any, clamps: Sequence[Clamp]) -> Iterator[ClampState]:
    """`clamps` installed on a plain native module for the duration of the block (hooks removed afterwards)."""
    if not isinstance(module, models.NativeModel) or _compat.is_wrapped(module):
        raise IncompatibleModelError(f"clamps attach to a plain native module (models.new_native(config)); got "
                                     f"{type(module).__name__} (use models.native_copy(bridge) for a bridge)")
    state = ClampState()

    def remember_inputs(_module: Any, args: tuple, kwargs: dict) -> None:
        state.inputs = _inputs_of(args, kwargs)

    def remember_embedding(_module: Any, args: tuple, kwargs: dict) -> None:
        state.embedding = args[0] if args else kwargs["hidden_states"]

    handles = [module.register_forward_pre_hook(remember_inputs, with_kwargs=True),
               module.layers[0].register_forward_pre_hook(remember_embedding, with_kwargs=True)]
    try:
        for clamp in clamps:
            handles += clamp.install(module, state)
        yield state
    finally:
        for handle in handles:
            handle.remove()
        state.inputs = state.embedding = None


__all__ = ["Ablate", "Clamp", "ClampState", "Copy", "Layer0", "Match", "PatternClamp", "PreviousToken",
           "attached", "check_all"]
