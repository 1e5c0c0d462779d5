"""Your own prompts: a task built from clean/corrupted prompt pairs in a file or in Python (registry name
``prompts``).

    task = tasks.prompts("ioi.jsonl")    # .jsonl, .json (also auto-circuit's), .csv (also EAP-IG's)
    task = tasks.prompts([{"clean": ..., "corrupted": ..., "answer": " Mary", "foil": " John"}, ...],
                         metric="probability")
    graph = circuits.discover(task.default_model(), task, engine="activation_patching", n=task.size)

The file is read and checked when the task is made (`tasks.prompt_files`: formats and file-level errors, before
any model loads). Tokenising needs the model; it happens the first time a batch is asked for, still before any
forward pass, and refuses, naming the row: a clean prompt and its corrupted twin of different token lengths, a
prompt longer than the model's context, an answer or foil that is not one token under the model's tokenizer (or,
with ``first_token=True``, read at its first token), token ids outside the vocabulary, an answer and foil that are
the same token. Prompts get the model's own BOS convention (`circuits.tokens.encode`); an answer is the tokens
that continue its clean prompt (`circuits.tokens.continuation`). Rows of different lengths are padded on the right
and read out at each row's last real token.

Rows with ``spans`` (`tasks.prompt_files`: a label per token, or ``{name: token position}``) give batches with
`PromptBatch.spans`: the span names in order of first appearance in the file, then ``"other"`` (tokens in no span,
and the padding); a list of another length than the clean prompt's tokens, or a position beyond them, is refused
naming the row. auto-circuit's ``word_idxs`` count tokens without the BOS: they are shifted by one for a model that
prepends it; where they give two names one token, the first keeps it (a warning names the others).

``batch(model, n, seed)`` takes `n` rows in an order drawn from `seed`; a file of N rows gives every seed the same
N rows when ``n >= N`` (`circuits.compare` reports such held-out prompts as not held out).
Metrics by name (`circuits.metrics.named`): ``logit_difference`` (answer − foil; the default with foils),
``log_probability`` (the default without), ``probability``, ``kl_divergence`` (−KL from the clean run's
distribution, which the batch carries as ``clean_logprobs``).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float
from torch import Tensor

from circuits import PromptBatch, metrics, models, tokens
from circuits.errors import InvalidOptionError, MultiTokenAnswerError, PromptFileError, UnequalLengthError
from tasks import prompt_files
from tasks.prompt_files import PromptPair

OPTIONS = ("metric", "first_token", "model", "name")


def prompts(source: Union[str, Path, list[Any], tuple[Any, ...]], **options: Any) -> "PromptPairs":
    """A task from prompt pairs: a file path (``.jsonl``, ``.json``, ``.csv``; `tasks.prompt_files`) or a list of
    records (dicts with clean, corrupted, answer and optionally foil). Options: ``metric`` (a name of
    `circuits.metrics.NAMED`; default ``logit_difference`` with foils, ``log_probability`` without), ``first_token``
    (read a multi-token answer at its first token instead of refusing it), ``model`` (what `default_model` loads: a
    local Hugging Face folder or a hub name; default the bundled SmolLM2), ``name``."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidOptionError(f"prompts has no option {unknown[0]!r}; expected some of: source, "
                                 f"{', '.join(OPTIONS)}")
    metric = options.pop("metric", None)
    return PromptPairs(source, metric_name=metric, **options)


@dataclass(frozen=True)
class Tokenized:
    """Every row tokenised for one model: prompts with the model's BOS convention, one answer (and foil) id each."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    answer: list[int]
    foil: Optional[list[int]]
    rows: list[str]
    spans: Optional[list[list[Optional[str]]]] = None  # per row, each token's span (None: "other")


@dataclass(frozen=True)
class PromptPairs:
    """Clean/corrupted prompt pairs with their answers (module docstring). Made by `prompts`."""

    source: Union[str, Path, list[Any], tuple[Any, ...]]
    metric_name: Optional[str] = None
    first_token: bool = False
    model: Optional[str] = None
    name: Optional[str] = None
    pairs: tuple[PromptPair, ...] = field(init=False, repr=False, compare=False)
    _tokenized: WeakKeyDictionary = field(default_factory=WeakKeyDictionary, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        is_file = isinstance(self.source, (str, Path))
        pairs = prompt_files.read(self.source) if is_file else prompt_files.from_records(self.source)
        object.__setattr__(self, "pairs", tuple(pairs))
        has_foil = pairs[0].foil is not None
        metric = self.metric_name or ("logit_difference" if has_foil else "log_probability")
        metrics.named(metric)  # UnknownNameError listing the metrics
        if metric == "logit_difference" and not has_foil:
            raise PromptFileError(f"metric 'logit_difference' needs a foil per prompt; {pairs[0].where} and the rest "
                                  "have none: add a foil, or use metric 'log_probability', 'probability' or "
                                  "'kl_divergence'")
        if not isinstance(self.first_token, bool):
            raise InvalidOptionError(f"first_token={self.first_token!r}; expected True or False")
        object.__setattr__(self, "metric_name", metric)
        if self.name is None:
            object.__setattr__(self, "name", f"prompts:{Path(self.source).stem}" if is_file else "prompts")
        _warn_about_spacing(pairs)

    @property
    def size(self) -> int:
        """The number of prompt pairs."""
        return len(self.pairs)

    def tokenized(self, model: Any) -> Tokenized:
        """Every row tokenised for `model` and checked (typed errors naming the row); once per model."""
        if model not in self._tokenized:
            self._tokenized[model] = tokenize(model, self.pairs, self.first_token)
        return self._tokenized[model]

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        """`n` rows (all of them when `n` is larger) in an order drawn from `seed`, right-padded, read out at each
        row's last token; with ``kl_divergence`` also the clean run's read-out log-probabilities."""
        rows = self.tokenized(model)
        order = torch.randperm(len(rows.rows), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        batch = tokens.paired([rows.clean[i] for i in order], [rows.corrupted[i] for i in order],
                              [rows.answer[i] for i in order],
                              None if rows.foil is None else [rows.foil[i] for i in order],
                              pad=tokens.pad_id(model), rows=[rows.rows[i] for i in order])
        if rows.spans is not None:
            batch = with_spans(batch, [rows.spans[i] for i in order], span_names(rows.spans))
        if self.metric_name == "kl_divergence":
            batch = replace(batch, clean_logprobs=metrics.clean_logprobs(model, batch))
        return batch

    def metric(self, logits: Float[Tensor, "batch d_vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        return metrics.named(self.metric_name)(logits, batch)

    def default_model(self) -> Any:
        """The model named by the ``model`` option (a local folder or a hub name), else the bundled SmolLM2."""
        return models.load(self.model) if self.model else models.bundled()


def tokenize(model: Any, pairs: tuple[PromptPair, ...], first_token: bool) -> Tokenized:
    """Token ids of every row for `model`, checked row by row (module docstring)."""
    tokens.tokenizer_of(model, "prompt pairs")
    cfg = model.cfg
    vocab = cfg.d_vocab_out if getattr(cfg, "d_vocab_out", -1) not in (None, -1) else cfg.d_vocab
    clean, corrupted, answer, foil, spans = [], [], [], [], []
    for pair in pairs:
        c, k = tokens.encode(model, pair.clean), tokens.encode(model, pair.corrupted)
        if len(c) != len(k):
            raise UnequalLengthError(f"{pair.where}: the clean prompt is {len(c)} tokens and the corrupted one "
                                     f"{len(k)} under this model's tokenizer; expected the same length (the read-out "
                                     "is at each row's last token, and patching swaps positions one for one)")
        if len(c) > cfg.n_ctx:
            raise PromptFileError(f"{pair.where}: the prompt is {len(c)} tokens; the model's context is "
                                  f"n_ctx={cfg.n_ctx}: expected a shorter prompt")
        clean.append(c)
        corrupted.append(k)
        bos = len(c) - len(tokens.encode(model, pair.clean, bos=False))  # 1 where the model prepends a BOS
        spans.append(None if pair.spans is None else token_spans(pair, len(c), bos, model))
        answer.append(_token(model, pair, "answer", first_token, vocab))
        if pair.foil is not None:
            foil.append(_token(model, pair, "foil", first_token, vocab))
            if foil[-1] == answer[-1]:
                raise PromptFileError(f"{pair.where}: the answer {pair.answer!r} and the foil {pair.foil!r} are the "
                                      f"same token {answer[-1]} {tokens.pieces(model, [answer[-1]])} under this "
                                      "tokenizer; expected two different tokens")
    return Tokenized(clean, corrupted, answer, foil if pairs[0].foil is not None else None, [p.where for p in pairs],
                     spans if pairs[0].spans is not None else None)


def token_spans(pair: PromptPair, length: int, bos: int, model: Any = None) -> list[Optional[str]]:
    """Each of the clean prompt's `length` tokens' span (None: no span), checked against the tokens (naming the
    row): a list of labels must be as long as the prompt, positions must lie in it, two names never share one
    (auto-circuit's ``word_idxs``: counted without the `bos` token, and the first name keeps a shared token;
    ``word_spans``: every token of the word, through `model`'s tokenizer, `word_tokens`)."""
    if pair.by_words:
        words = word_tokens(model, pair.clean, bos)
        out: list[Optional[str]] = [None] * length
        for name, word in pair.spans.items():
            if word >= len(words):
                raise PromptFileError(f"{pair.where}: word_spans puts {name!r} at word {word}; the clean prompt has "
                                      f"{len(words)} words (separated by whitespace, counted from 0)")
            for position in words[word]:
                if out[position] is not None:
                    raise PromptFileError(f"{pair.where}: word_spans {out[position]!r} and {name!r} share token "
                                          f"{position}; expected one span per token")
                out[position] = name
        return out
    if isinstance(pair.spans, tuple):
        if len(pair.spans) != length:
            raise PromptFileError(f"{pair.where}: spans label {len(pair.spans)} tokens; the clean prompt is {length} "
                                  "tokens under this model's tokenizer (its BOS included); expected a label (or null) "
                                  "per token")
        return list(pair.spans)
    out: list[Optional[str]] = [None] * length
    shift = bos if pair.word_idxs else 0
    shared = []
    for name, position in pair.spans.items():
        position += shift
        if position >= length:
            raise PromptFileError(f"{pair.where}: span {name!r} at token {position}; the clean prompt is {length} "
                                  "tokens under this model's tokenizer (its BOS included); expected a position in "
                                  f"[0, {length})")
        if out[position] is not None and pair.word_idxs:
            shared.append(f"{name!r} (kept by {out[position]!r})")
            continue
        if out[position] is not None:
            raise PromptFileError(f"{pair.where}: spans {out[position]!r} and {name!r} both at token {position}; "
                                  "expected one span per token")
        out[position] = name
    if shared:
        warnings.warn(f"word_idxs give these names a token another name has: {', '.join(shared)}; each token is in "
                      "one span, so these spans are left out", stacklevel=6)
    return out


def word_tokens(model: Any, text: str, bos: int) -> list[list[int]]:
    """Per whitespace-separated word of `text`, the positions of the tokens that overlap it (as the model reads
    `text`: after `bos` BOS tokens), from the tokenizer's character offsets; a token across two words is in both."""
    tokenizer = tokens.tokenizer_of(model, "word_spans")
    try:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError) as error:  # slow tokenizers have no offsets
        raise PromptFileError(f"word_spans need a tokenizer that gives character offsets (a fast one); this model's "
                              f"does not ({error}): give spans per token instead") from None
    words = [match.span() for match in re.finditer(r"\S+", text)]
    return [[bos + i for i, (start, stop) in enumerate(offsets) if start < end and stop > begin]
            for begin, end in words]


def span_names(spans: list[list[Optional[str]]]) -> tuple[str, ...]:
    """Every span name in order of first appearance, then ``"other"`` (tokens in no span, padding)."""
    names = dict.fromkeys(label for row in spans for label in row if label is not None)
    return tuple(names) + (() if PromptBatch.OTHER in names else (PromptBatch.OTHER,))


def with_spans(batch: PromptBatch, spans: list[list[Optional[str]]], names: tuple[str, ...]) -> PromptBatch:
    """`batch` with its rows' spans (right-padded with ``"other"``, as the prompts are with the pad token)."""
    other = names.index(PromptBatch.OTHER)
    index = torch.full(batch.clean.shape[:2], other, dtype=torch.long)
    for i, row in enumerate(spans):
        index[i, :len(row)] = torch.tensor([other if label is None else names.index(label) for label in row])
    return replace(batch, spans=index, span_names=names)


def _token(model: Any, pair: PromptPair, name: str, first_token: bool, vocab: int) -> int:
    value = getattr(pair, name)
    if isinstance(value, int):
        if not 0 <= value < vocab:
            raise PromptFileError(f"{pair.where}: {name} is token id {value}, outside this model's vocabulary "
                                  f"[0, {vocab}); expected an id of this model's tokenizer (token ids in a file belong "
                                  "to the tokenizer it was made with)")
        return value
    ids = tokens.continuation(model, pair.clean, value)
    if not ids:
        tail = tokens.encode(model, pair.clean + value, bos=False)[-3:]
        raise PromptFileError(f"{pair.where}: {name} {value!r} does not begin a new token after the clean prompt: "
                              f"the prompt's last token and it merge ({tokens.pieces(model, tail)}); expected text "
                              f"that starts a new token, e.g. {' ' + value.lstrip()!r}")
    if len(ids) > 1 and not first_token:
        raise MultiTokenAnswerError(f"{pair.where}: {name} {value!r} is {len(ids)} tokens {tokens.pieces(model, ids)} "
                                    "under this tokenizer; expected one token (the metric reads one logit), or "
                                    f"first_token=True (--first-token) to read its first token "
                                    f"{tokens.pieces(model, ids[:1])[0]!r}")
    return ids[0]


def _warn_about_spacing(pairs: list[PromptPair]) -> None:
    glued = [p for p in pairs
             if isinstance(p.answer, str) and not p.answer[:1].isspace() and not p.clean[-1:].isspace()]
    if glued:
        examples = "; ".join(f"{p.where}: ...{p.clean[-12:]!r} + {p.answer!r}" for p in glued[:3])
        warnings.warn(f"{len(glued)} of {len(pairs)} answers continue their prompt without a space ({examples}): "
                      "the model reads them glued to the prompt's last word; give answers that start a new word a "
                      "leading space (' Mary')", stacklevel=4)
