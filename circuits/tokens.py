"""Text prompts as token ids, done right for the model: its own BOS convention, answers as the tokens that continue
a prompt, and clean/corrupted pairs checked row by row before they are padded into a `PromptBatch`.

    ids = tokens.encode(model, "When Mary and John went to the store, John gave a drink to")
    tokens.continuation(model, prompt, " Mary")      # [5099]: the token the model must predict after `prompt`
    batch = tokens.paired(clean, corrupted, answer=[...], foil=[...], pad=tokens.pad_id(model))

Right-padding is safe in a causal model (no position before the read-out sees the padding) but it hides a
corrupted prompt of another length than its clean twin: `paired` refuses such a row (`UnequalLengthError`, naming
the row and both lengths) before padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from jaxtyping import Int
from torch import Tensor

from circuits._task import PromptBatch
from circuits.errors import IncompatibleModelError, UnequalLengthError


def tokenizer_of(model: Any, what: str = "text prompts") -> Any:
    """The model's tokenizer; `IncompatibleModelError` for a model without one (e.g. a toy model)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        name = getattr(getattr(model, "cfg", None), "model_name", None) or type(model).__name__
        raise IncompatibleModelError(f"{what} need a model with a tokenizer; model {name!r} has none "
                                     "(a Hugging Face model: circuits.models.bundled() or circuits.models.load(...))")
    return tokenizer


def encode(model: Any, text: str, *, bos: Optional[bool] = None) -> list[int]:
    """`text` as the model reads it, never truncated: with a BOS token first where the model's own convention puts
    one (TransformerLens's ``cfg.default_prepend_bos``; `bos` overrides it)."""
    tokenizer_of(model)
    return model.to_tokens(text, prepend_bos=bos, truncate=False, move_to_device=False)[0].tolist()


def continuation(model: Any, prompt: str, text: str) -> Optional[list[int]]:
    """The tokens `text` adds after `prompt` when the model reads ``prompt + text``: what the model predicts next
    (a SentencePiece tokenizer, for one, tokenizes ``" Mary"`` alone differently). None when the joint tokens do not
    begin with the prompt's own: `text` merges with the prompt's last token and is no next token at all."""
    alone = encode(model, prompt, bos=False)
    joint = encode(model, prompt + text, bos=False)
    if joint[: len(alone)] != alone:
        return None
    return joint[len(alone):]


def pieces(model: Any, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own (for messages)."""
    tokenizer = tokenizer_of(model)
    return [tokenizer.decode([i]) for i in ids]


def pad_id(model: Any) -> int:
    """The token that fills right-padded rows: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    tokenizer = tokenizer_of(model)
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def padded(prompts: Sequence[Sequence[int]], pad: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Right-padded token ids and each prompt's last position (causal models never see the padding)."""
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad, dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    return tokens, torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long)


def paired(clean: Sequence[Sequence[int]], corrupted: Sequence[Sequence[int]], answer: Sequence[int],
           foil: Optional[Sequence[int]] = None, *, pad: int, rows: Optional[Sequence[str]] = None) -> PromptBatch:
    """Clean and corrupted token prompts, right-padded, read out at each prompt's last token. Each clean prompt and
    its corrupted twin must have the same length: `UnequalLengthError` names the first row that does not (by
    `rows`, labels such as ``"prompts.jsonl line 3"``; else ``"row i"``) and both lengths."""
    if len(clean) != len(corrupted):
        raise UnequalLengthError(f"{len(clean)} clean prompts but {len(corrupted)} corrupted ones; expected one "
                                 "corrupted prompt per clean prompt")
    for i, (c, k) in enumerate(zip(clean, corrupted)):
        if len(c) != len(k):
            label = rows[i] if rows is not None else f"row {i}"
            raise UnequalLengthError(
                f"{label}: the clean prompt is {len(c)} tokens and the corrupted one {len(k)}; expected the same "
                "length (the read-out is at each row's last token, and patching swaps positions one for one)")
    clean_tokens, position = padded(clean, pad)
    corrupted_tokens, _ = padded(corrupted, pad)
    return PromptBatch(clean=clean_tokens, corrupted=corrupted_tokens, position=position,
                       answer=torch.tensor(list(answer), dtype=torch.long),
                       foil=None if foil is None else torch.tensor(list(foil), dtype=torch.long))
