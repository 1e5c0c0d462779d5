"""Prompt pairs read from the files researchers already have, checked before any model work.

| format | shape | answers |
|---|---|---|
| JSONL (``.jsonl``) or JSON (``.json``, a list) | one object per line / item: ``clean``, ``corrupted``, ``answer``, optional ``foil`` and ``spans`` or ``word_spans`` (and ``meta``, ignored) | strings |
| auto-circuit JSON (``.json``) | ``{"prompts": [{"clean", "corrupt", "answers", "wrong_answers"}, ...]}``, optional ``word_idxs`` (spans of every prompt); other keys ignored | one string (or token id) in ``answers``, at most one in ``wrong_answers`` |
| CSV (``.csv``) | columns ``clean``, ``corrupted``, ``answer``, optional ``foil`` | strings |
| EAP-IG CSV (``.csv``) | columns ``clean``, ``corrupted``, ``correct_idx``, ``incorrect_idx``; other columns ignored | token ids of the tokenizer the file was made for |

Spans (positional circuits, docs/positional.md) name tokens of the clean prompt as the model reads it (its BOS
included where it adds one): either a label per token (a list as long as the prompt's tokens; null for a token in no
span) or ``{name: token position}``; or, as ``word_spans``, ``{name: word index}`` (whitespace-separated words of the
clean prompt counted from 0, the BOS no word: every token overlapping the word, through the tokenizer's character
offsets). auto-circuit's file-level ``word_idxs`` are token positions counted without the
BOS (auto-circuit adds one where it prepends it, and so does `tasks.prompt_pairs`), and may give two names one token
(its IOI files: ``"IO+1"`` and ``"S1-1"``): the first name keeps it. Tokens without a span are in span ``"other"``.
The lengths and positions are checked against the model's tokens by `tasks.prompt_pairs`.

Every problem is a `PromptFileError` (a typed error) naming the file, the line or row, the value and what was
expected: a missing key or column, an empty file, bytes that are not UTF-8, invalid JSON, an answer equal to its
foil, a foil in some rows only. Token-level checks (lengths, one-token answers, ids inside the vocabulary) need the
model's tokenizer: `tasks.prompt_pairs` makes them when the model is known, still before any forward pass.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

from circuits.errors import PromptFileError

Answer = Union[str, int]  # text, or a token id (EAP-IG's CSV, auto-circuit's token answers)
FIELDS = ("clean", "corrupted", "answer", "foil")
SPANS = "spans"  # a record's optional spans (module docstring)
WORD_SPANS = "word_spans"  # or spans by word: {name: index of a whitespace-separated word of the clean prompt}
IGNORED = ("meta",)  # a record's own notes: kept out of the way, never read
EAP_IG = ("clean", "corrupted", "correct_idx", "incorrect_idx")
_INDEX_COLUMNS = ("", "Unnamed: 0")  # the unnamed index column pandas writes


@dataclass(frozen=True)
class PromptPair:
    """One clean prompt, its corrupted twin, the answer the clean prompt should be continued with and an optional
    foil (the competing answer); `where` says where it came from (``"ioi.jsonl line 3"``) for error messages."""

    clean: str
    corrupted: str
    answer: Answer
    foil: Optional[Answer] = None
    where: str = ""
    spans: Union[tuple[Optional[str], ...], dict[str, int], None] = None  # per-token labels or {name: token position}
    word_idxs: bool = False  # spans from auto-circuit's word_idxs: positions without the BOS, shared tokens allowed
    by_words: bool = False  # spans from word_spans: {name: word index}, each word's every token in its span


def read(path: Union[str, Path]) -> list[PromptPair]:
    """The prompt pairs of a ``.jsonl``, ``.json`` or ``.csv`` file (formats above), checked."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {str(path)!r} does not exist; expected a .jsonl, .json or .csv file")
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv}
    if path.suffix.lower() not in readers:
        raise PromptFileError(f"{path}: unknown prompt file type {path.suffix!r}; expected one of {sorted(readers)}")
    text = _text(path)
    if not text.strip():
        raise PromptFileError(f"{path} is empty; expected prompt pairs (clean, corrupted, answer, optional foil)")
    return checked(readers[path.suffix.lower()](path, text), str(path))


def from_records(records: Iterable[Any]) -> list[PromptPair]:
    """Prompt pairs given in Python: dicts with the keys of the JSONL format, or `PromptPair` values."""
    pairs = []
    for i, record in enumerate(records):
        pairs.append(record if isinstance(record, PromptPair) else _record(record, f"record {i}"))
    return checked(pairs, "the records")


def checked(pairs: Sequence[PromptPair], source: str) -> list[PromptPair]:
    """Refuse no pairs, a foil in some rows only, and answers of mixed kinds (text and token ids)."""
    if not pairs:
        raise PromptFileError(f"{source}: no prompt pairs; expected at least one")
    with_foil = [p.foil is not None for p in pairs]
    if any(with_foil) and not all(with_foil):
        odd = pairs[with_foil.index(not with_foil[0])]
        raise PromptFileError(f"{odd.where}: {'no' if with_foil[0] else 'a'} foil, while {pairs[0].where} has "
                              f"{'one' if with_foil[0] else 'none'}; expected a foil in every row or in none")
    for pair in pairs:
        if (pair.spans is None) != (pairs[0].spans is None):
            raise PromptFileError(f"{pair.where}: {'no' if pair.spans is None else ''} spans, while {pairs[0].where} "
                                  f"has {'none' if pairs[0].spans is None else 'some'}; expected spans in every row or "
                                  "in none")
        if isinstance(pair.answer, int) != isinstance(pairs[0].answer, int):
            raise PromptFileError(f"{pair.where}: answer {pair.answer!r} mixes text answers and token ids with "
                                  f"{pairs[0].where} ({pairs[0].answer!r}); expected one kind in a file")
    return list(pairs)


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (spreadsheets write one) is dropped
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise PromptFileError(f"{path} line {line}: byte {data[error.start]:#04x} is not UTF-8 ({error.reason}); "
                              "expected a UTF-8 text file (re-save it as UTF-8)") from None


# --- JSONL and JSON -----------------------------------------------------------------------------------------
def _jsonl(path: Path, text: str) -> list[PromptPair]:
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            pairs.append(_record(_parsed(line, f"{path} line {number}"), f"{path} line {number}"))
    return pairs


def _parsed(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{where}: not valid JSON ({error.msg} at column {error.colno}): "
                              f"{text.strip()[:80]!r}") from None


def _json(path: Path, text: str) -> list[PromptPair]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{path} line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})"
                              + ("; a file of one object per line is JSON Lines: name it .jsonl" if
                                 error.msg == "Extra data" else "")) from None
    if isinstance(data, dict) and "prompts" in data:
        pairs = _auto_circuit(path, data["prompts"])
        return [replace(_with_spans(p, data.get("word_idxs"), f"{path}: word_idxs"), word_idxs="word_idxs" in data)
                for p in pairs]
    if isinstance(data, list):
        return [_record(item, f"{path} [{i}]") for i, item in enumerate(data)]
    raise PromptFileError(f"{path}: the JSON is a {type(data).__name__}{_keys(data)}; expected a list of records "
                          "{clean, corrupted, answer, foil?} or auto-circuit's {\"prompts\": [...]}")


def _keys(data: Any) -> str:
    return f" with keys {sorted(data)[:8]}" if isinstance(data, dict) else ""


def _record(data: Any, where: str) -> PromptPair:
    if not isinstance(data, dict):
        raise PromptFileError(f"{where}: a {type(data).__name__} ({str(data)[:60]!r}); expected an object with "
                              "clean, corrupted, answer and optionally foil")
    unknown = sorted(set(data) - set(FIELDS) - {SPANS, WORD_SPANS} - set(IGNORED))
    if unknown:
        raise PromptFileError(f"{where}: unknown key {unknown[0]!r}; expected clean, corrupted, answer and optionally "
                              "foil and spans or word_spans (keep other fields under 'meta')")
    for key in FIELDS[:3]:
        if key not in data:
            raise PromptFileError(f"{where}: no {key!r} key (keys: {sorted(data)}); expected clean, corrupted, answer "
                                  "and optionally foil")
    pair = _pair(data["clean"], data["corrupted"], data["answer"], data.get("foil"), where, token_ids=False)
    if WORD_SPANS in data:
        if SPANS in data:
            raise PromptFileError(f"{where}: both spans and word_spans; expected one of them")
        words = data[WORD_SPANS]
        if isinstance(words, list):  # a label per token is not a word index: say which form word_spans takes
            raise PromptFileError(f"{where}: word_spans is a list; expected {{name: word index}}")
        return replace(_with_spans(pair, words, f"{where}: word_spans"), by_words=True)
    return _with_spans(pair, data.get(SPANS), f"{where}: spans")


def _auto_circuit(path: Path, prompts: Any) -> list[PromptPair]:
    """auto-circuit's ``prompts``: ``clean``, ``corrupt``, ``answers`` and ``wrong_answers`` (lists); other keys
    are ignored, as auto-circuit ignores them."""
    if not isinstance(prompts, list):
        raise PromptFileError(f"{path}: 'prompts' is a {type(prompts).__name__}; expected a list of prompt objects")
    pairs = []
    for i, item in enumerate(prompts):
        where = f"{path} prompts[{i}]"
        if not isinstance(item, dict):
            raise PromptFileError(f"{where}: a {type(item).__name__}; expected an object with clean, corrupt, answers "
                                  "and wrong_answers")
        for key in ("clean", "corrupt", "answers", "wrong_answers"):
            if key not in item:
                raise PromptFileError(f"{where}: no {key!r} key (keys: {sorted(item)}); expected auto-circuit's clean, "
                                      "corrupt, answers and wrong_answers")
        answer = _single(item["answers"], "answers", where, allow_none=False)
        foil = _single(item["wrong_answers"], "wrong_answers", where, allow_none=True)
        pairs.append(_pair(item["clean"], item["corrupt"], answer, foil, where, token_ids=True))
    return pairs


def _single(values: Any, key: str, where: str, allow_none: bool) -> Any:
    if not isinstance(values, list):
        raise PromptFileError(f"{where}: {key} is {values!r}; expected a list (auto-circuit's format)")
    if len(values) > 1 or (not values and not allow_none):
        raise PromptFileError(f"{where}: {key} holds {len(values)} values {values[:4]}; expected "
                              f"{'at most ' if allow_none else ''}one: this task reads one answer and at most one "
                              "foil per prompt")
    return values[0] if values else None


# --- CSV --------------------------------------------------------------------------------------------------
def _csv(path: Path, text: str) -> list[PromptPair]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    eap_ig = "correct_idx" in header or "incorrect_idx" in header
    if eap_ig and ("answer" in header or "foil" in header):
        raise PromptFileError(f"{path} line 1: columns {header} mix answer/foil (text) with correct_idx/incorrect_idx "
                              "(token ids); expected one kind")
    if "label" in header and "answer" not in header and not eap_ig:
        raise PromptFileError(f"{path} line 1: a 'label' column and no 'answer' (EAP-IG's greater-than files hold a "
                              "year there, not a token); expected answer (and foil) as text, or EAP-IG's token-id "
                              "columns correct_idx and incorrect_idx")
    required = EAP_IG if eap_ig else FIELDS[:3]
    missing = [column for column in required if column not in header]
    if missing:
        note = (" (in EAP-IG's greater-than files correct_idx is a year, not a token id: write answer and foil as "
                "text instead)" if missing == ["incorrect_idx"] else "")
        raise PromptFileError(f"{path} line 1: no {missing[0]!r} column (columns: {header}); expected "
                              f"{', '.join(required)}{'' if eap_ig else ' and optionally foil'}{note}")
    if not eap_ig:
        unknown = [c for c in header if c not in FIELDS and c not in _INDEX_COLUMNS and not c.startswith("meta")]
        if unknown:
            raise PromptFileError(f"{path} line 1: unknown column {unknown[0]!r}; expected clean, corrupted, answer "
                                  "and optionally foil (name other columns meta...)")
    pairs = []
    for number, row in enumerate(reader, 1):
        where = f"{path} row {number} (line {reader.line_num})"
        if None in row:
            raise PromptFileError(f"{where}: {len(header) + len(row[None])} fields for {len(header)} columns; expected "
                                  "one per column (quote fields that hold commas)")
        short = [column for column in required if row.get(column) is None]
        if short:
            raise PromptFileError(f"{where}: no value for {short[0]!r}; expected one per column")
        if eap_ig:
            answer, foil = _token_id(row["correct_idx"], "correct_idx", where), _token_id(row["incorrect_idx"],
                                                                                          "incorrect_idx", where)
        else:
            answer, foil = row["answer"], row.get("foil")
            if foil == "" and "foil" in header:
                raise PromptFileError(f"{where}: the foil is empty; expected a foil in every row (or no foil column)")
        pairs.append(_pair(row["clean"], row["corrupted"], answer, foil, where, token_ids=eap_ig))
    return pairs


def _token_id(text: str, column: str, where: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise PromptFileError(f"{where}: {column} is {text!r}; expected a token id (an integer >= 0)")
    return int(text)


# --- one pair ---------------------------------------------------------------------------------------------
def _with_spans(pair: PromptPair, spans: Any, where: str) -> PromptPair:
    """`pair` with its spans checked (module docstring): None, a list of labels (str or None) per token, or
    ``{name: token position}``."""
    if spans is None:
        return pair
    if isinstance(spans, list) and spans and all(label is None or (isinstance(label, str) and label)
                                                 for label in spans):
        return replace(pair, spans=tuple(spans))
    if isinstance(spans, dict) and spans and all(isinstance(k, str) and k and isinstance(v, int)
                                                 and not isinstance(v, bool) and v >= 0 for k, v in spans.items()):
        return replace(pair, spans=dict(spans))
    raise PromptFileError(f"{where} is {str(spans)[:80]!r}; expected a label (a string, or null) per token of the clean "
                          "prompt, or {name: token position} (auto-circuit's word_idxs)")


def _pair(clean: Any, corrupted: Any, answer: Any, foil: Any, where: str, token_ids: bool) -> PromptPair:
    for name, value in (("clean", clean), ("corrupted", corrupted)):
        if not isinstance(value, str):
            raise PromptFileError(f"{where}: {name} is {value!r}; expected the prompt as a string"
                                  + (" (pre-tokenized prompts are not read)" if isinstance(value, list) else ""))
        if not value.strip():
            raise PromptFileError(f"{where}: {name} is empty; expected a prompt")
    for name, value in (("answer", answer), ("foil", foil)):
        if value is None and name == "foil":
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, int) and not token_ids):
            raise PromptFileError(f"{where}: {name} is {value!r}; expected "
                                  + ("a string or a token id" if token_ids else "a string (the text that continues "
                                                                                "the clean prompt)"))
        if isinstance(value, str) and not value.strip():
            raise PromptFileError(f"{where}: {name} {value!r} is empty; expected the text that continues the prompt")
        if isinstance(value, int) and value < 0:
            raise PromptFileError(f"{where}: {name} is token id {value}; expected an id >= 0")
    if foil is not None and answer == foil:
        raise PromptFileError(f"{where}: the answer and the foil are both {answer!r}; expected two different answers "
                              "(the logit difference between equal answers is always 0)")
    return PromptPair(clean, corrupted, answer, foil, where)
