"""Where positional edges act in a batch: position labels per token, and the tokens an edge's position names.

Two kinds of labels (`KINDS`): ``"tokens"``, a token's index (labels ``"0" .. "P-1"``, `P` the prompts' whole length),
and ``"spans"``, the name of the span the task put the token in (`PromptBatch.spans`, ``span_names``), so that
prompts of different lengths share positions. Every token has exactly one label, so summing over the labels gives
the plain (position-free) value. See docs/positional.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuits._task import PromptBatch
from circuits.errors import InvalidBatchError, InvalidEdgeError, InvalidOptionError

KINDS = ("tokens", "spans")


def check_kind(kind: Any, where: str = "positions") -> None:
    if kind is not None and kind not in KINDS:
        raise InvalidOptionError(f"{where}={kind!r}; expected None (plain edges) or one of {KINDS}")


def labelled(batch: PromptBatch, kind: str, task: Any = None) -> tuple[Int[Tensor, "batch pos"], tuple[str, ...]]:
    """Each token's label index ``[batch, pos]`` (on the batch's device) and the labels' names for `kind`: token
    indices over the whole length (`n_positions`, positions `trimmed` dropped included), or the batch's spans (a batch
    without spans: `InvalidBatchError` naming `task`)."""
    check_kind(kind)
    size, length = batch.clean.shape[0], batch.clean.shape[1]
    if kind == "tokens":
        index = torch.arange(length, device=batch.clean.device).expand(size, length)
        return index, tuple(str(p) for p in range(batch.n_positions))
    if batch.spans is None:
        name = getattr(task, "name", None) or "this task"
        raise InvalidBatchError(f"positions='spans' needs a batch with spans; task {name!r} gave none: expected a "
                                "task that marks spans (PromptBatch.spans and span_names, e.g. tasks.prompts records "
                                "with 'spans'), or positions='tokens'")
    return batch.spans.to(batch.clean.device), tuple(batch.span_names)


def label_masks(batch: PromptBatch, kind: str, task: Any = None) -> tuple[Bool[Tensor, "label batch pos"],
                                                                         tuple[str, ...]]:
    """Per label of `kind`, ``[batch, pos]``: True at each prompt's tokens with that label (`labelled`); the masks
    the engines patch or decompose one label at a time with, and the labels' names."""
    index, labels = labelled(batch, kind, task)
    return index[None] == torch.arange(len(labels), device=index.device)[:, None, None], labels


def graph_record(kind: str, labels: Any, not_additive: str = "") -> dict[str, Any]:
    """A positional graph's ``meta["positions"]``: its `kind` and `labels`; for an engine whose per-position values
    do not sum to the plain score, ``"sum"`` says why (`not_additive`) — the viewer and docs show it."""
    record: dict[str, Any] = {"kind": kind, "labels": list(labels)}
    if not_additive:
        record["sum"] = f"differs from score: {not_additive}"
    return record


def tokens_at(batch: PromptBatch, position: Union[int, str]) -> Bool[Tensor, "batch pos"]:
    """``[batch, pos]``: True at the tokens `position` names in each prompt (a token index, or a span name resolved
    per prompt). An index beyond the prompts or a span the batch lacks: `InvalidEdgeError` naming it."""
    size, length = batch.clean.shape[0], batch.clean.shape[1]
    if isinstance(position, int):
        if position >= batch.n_positions:
            raise InvalidEdgeError(f"position {position}: the prompts have {batch.n_positions} positions; expected a "
                                   f"token index in [0, {batch.n_positions})")
        out = torch.zeros(size, length, dtype=torch.bool)
        if position < length:  # beyond: dropped by `trimmed`, where nothing can change the read-out
            out[:, position] = True
        return out
    names = batch.span_names or ()
    if position not in names:
        raise InvalidEdgeError(f"position {position!r} is no span of these prompts; expected a token index or one "
                               f"of their spans {names}" if names else
                               f"position {position!r} names a span, but these prompts have none; expected a token "
                               "index (or a task that marks spans)")
    return (batch.spans == names.index(position)).cpu()


@dataclass(frozen=True)
class Grouping:
    """The tokens of a batch grouped by label: `sorted` puts a ``[rows, batch, pos, d]`` tensor's tokens in label
    order (``[rows, batch * pos, d]``), so that each label's tokens are one contiguous segment; `products` then takes
    the per-label products of two such tensors, ``[rows_a, rows_b, label]``, in one matrix product per label: the
    same work as the position-free product ``a.flatten(1) @ b.flatten(1).T``, which is their sum over labels."""

    order: Tensor  # indices into the flattened (batch, pos) axis, sorted by label (stable)
    segments: tuple[tuple[int, int, int], ...]  # (label, start, stop) of each label that some token has
    labels: int

    @classmethod
    def of(cls, index: Int[Tensor, "batch pos"], labels: int) -> "Grouping":
        flat = index.flatten()
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat.cpu(), minlength=labels).tolist()
        starts = [sum(counts[:label]) for label in range(labels)]
        segments = tuple((label, starts[label], starts[label] + c) for label, c in enumerate(counts) if c)
        return cls(order, segments, labels)

    def sorted(self, values: Float[Tensor, "rows batch pos d"]) -> Float[Tensor, "rows tokens d"]:
        return values.flatten(1, 2).index_select(1, self.order.to(values.device))

    def products(self, a: Float[Tensor, "rows_a tokens d"],
                 b: Float[Tensor, "rows_b tokens d"]) -> Float[Tensor, "rows_a rows_b label"]:
        """Per label, ``Σ_tokens Σ_d a · b`` over that label's tokens (`a` and `b` already `sorted`)."""
        out = a.new_zeros(a.shape[0], b.shape[0], self.labels)
        for label, start, stop in self.segments:
            out[:, :, label] = a[:, start:stop].flatten(1) @ b[:, start:stop].flatten(1).T
        return out
