"""Prompt files (`tasks.prompt_files`): the three formats read to the same pairs, and every kind of bad input is a
typed error naming the file, the line or row and the value, raised while reading (no model involved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tasks
from circuits.errors import PromptFileError, UnknownNameError
from tasks import prompt_files
from tasks.prompt_files import PromptPair

ROWS = [{"clean": "When Mary and John went to the store , John gave a drink to",
         "corrupted": "When Mary and John went to the store , Paul gave a drink to", "answer": " Mary", "foil": " John"},
        {"clean": "Then Tom and James went to the park , James gave a ball to",
         "corrupted": "Then Tom and James went to the park , Peter gave a ball to", "answer": " Tom", "foil": " James"}]


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def auto_circuit(path: Path, rows: list) -> Path:
    """auto-circuit's documented shape (`auto_circuit.data.load_datasets_from_json`): optional seq_labels and
    word_idxs beside ``prompts``, each with clean, corrupt, answers and wrong_answers lists."""
    prompts = [{"clean": r["clean"], "corrupt": r["corrupted"], "answers": [r["answer"]], "wrong_answers": [r["foil"]]}
               for r in rows]
    path.write_text(json.dumps({"seq_labels": ["a", "b"], "word_idxs": {"end": 3}, "prompts": prompts}))
    return path


def csv_file(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def test_the_formats_read_to_the_same_pairs(tmp_path):
    expected = [(r["clean"], r["corrupted"], r["answer"], r["foil"]) for r in ROWS]
    as_tuples = lambda pairs: [(p.clean, p.corrupted, p.answer, p.foil) for p in pairs]  # noqa: E731
    from_jsonl = prompt_files.read(jsonl(tmp_path / "p.jsonl", ROWS))
    assert as_tuples(from_jsonl) == expected and from_jsonl[1].where == f"{tmp_path / 'p.jsonl'} line 2"
    assert as_tuples(prompt_files.read(auto_circuit(tmp_path / "ac.json", ROWS))) == expected
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    assert as_tuples(prompt_files.read(tmp_path / "list.json")) == expected
    quoted = [f'"{r["clean"]}","{r["corrupted"]}",{r["answer"]},{r["foil"]}' for r in ROWS]  # leading spaces kept
    assert as_tuples(prompt_files.read(csv_file(tmp_path / "p.csv", "clean,corrupted,answer,foil", quoted))) == expected
    assert as_tuples(prompt_files.from_records(ROWS)) == expected
    assert as_tuples(prompt_files.from_records([PromptPair(*row) for row in expected])) == expected


def test_eap_ig_csv_reads_token_ids_and_ignores_other_columns(tmp_path):
    """EAP-IG's IOI CSV (hannamw/EAP-IG ioi_llama.csv): an unnamed index column, clean, corrupted, corrupted_hard,
    correct_idx, incorrect_idx."""
    path = csv_file(tmp_path / "eap.csv", ",clean,corrupted,corrupted_hard,correct_idx,incorrect_idx",
                    [f'7,"{ROWS[0]["clean"]}","{ROWS[0]["corrupted"]}","x",30,31'])
    [pair] = prompt_files.read(path)
    assert (pair.answer, pair.foil, pair.clean) == (30, 31, ROWS[0]["clean"])


def test_no_foils_and_extra_fields(tmp_path):
    rows = [{"clean": "a b", "corrupted": "a c", "answer": " d", "meta": {"template": 3}}]
    [pair] = prompt_files.read(jsonl(tmp_path / "p.jsonl", rows))
    assert pair.foil is None
    # auto-circuit ignores keys it does not know, and so do we; an empty wrong_answers is no foil
    (tmp_path / "ac.json").write_text(json.dumps({"prompts": [{"clean": "a b", "corrupt": "a c", "answers": [" d"],
                                                               "wrong_answers": [], "id": 4}]}))
    assert prompt_files.read(tmp_path / "ac.json")[0].foil is None


BAD = [  # (file name, content, words the message must hold)
    ("p.jsonl", "", ["p.jsonl is empty"]),
    ("p.jsonl", "\n  \n", ["p.jsonl is empty"]),
    ("p.jsonl", json.dumps(ROWS[0]) + "\n" + '{"clean": "a", "corrupted": "b"}\n', ["line 2", "no 'answer' key"]),
    ("p.jsonl", json.dumps(ROWS[0]) + "\n{not json\n", ["line 2", "not valid JSON", "{not json"]),
    ("p.jsonl", json.dumps({**ROWS[0], "foils": " x"}) + "\n", ["line 1", "unknown key 'foils'"]),
    ("p.jsonl", json.dumps({**ROWS[0], "foil": " Mary"}) + "\n", ["line 1", "both ' Mary'"]),
    ("p.jsonl", json.dumps(ROWS[0]) + "\n" + json.dumps({k: v for k, v in ROWS[1].items() if k != "foil"}) + "\n",
     ["line 2", "no foil", "line 1 has one"]),
    ("p.jsonl", json.dumps({**ROWS[0], "answer": 30}) + "\n", ["line 1", "answer is 30", "expected a string"]),
    ("p.jsonl", json.dumps({**ROWS[0], "clean": ""}) + "\n", ["line 1", "clean is empty"]),
    ("p.jsonl", json.dumps({**ROWS[0], "answer": " "}) + "\n", ["line 1", "answer ' ' is empty"]),
    ("p.json", json.dumps({"prompts": [{"clean": "a", "corrupt": "b", "answers": [" c", " d"], "wrong_answers": []}]}),
     ["prompts[0]", "answers holds 2 values", "expected one"]),
    ("p.json", json.dumps({"prompts": [{"clean": "a", "corrupt": "b", "answers": [" c"]}]}),
     ["prompts[0]", "no 'wrong_answers' key"]),
    ("p.json", json.dumps({"prompts": [{"clean": [1, 2], "corrupt": "b", "answers": [" c"], "wrong_answers": []}]}),
     ["prompts[0]", "clean is [1, 2]", "pre-tokenized"]),
    ("p.json", '{"prompts": [\n{"clean": "a",\n}]}', ["line 3", "not valid JSON"]),
    ("p.json", json.dumps({"data": []}), ["a dict with keys ['data']", "expected a list of records"]),
    ("p.csv", "clean,corrupted,foil\na,b,c\n", ["line 1", "no 'answer' column", "['clean', 'corrupted', 'foil']"]),
    ("p.csv", "clean,corrupted,answer,foil\na,b, c, d\ne,f, g,\n", ["row 2 (line 3)", "the foil is empty"]),
    ("p.csv", "clean,corrupted,answer\na,b, c, d\n", ["row 1 (line 2)", "4 fields for 3 columns"]),
    ("p.csv", "clean,corrupted,answer\na,b\n", ["row 1 (line 2)", "no value for 'answer'"]),
    ("p.csv", "clean,corrupted,answer,note\na,b, c,x\n", ["line 1", "unknown column 'note'"]),
    ("p.csv", "clean,corrupted,correct_idx,incorrect_idx\na,b,12,x3\n", ["row 1 (line 2)", "incorrect_idx is 'x3'",
                                                                          "token id"]),
    ("p.csv", "clean,corrupted,correct_idx,incorrect_idx\na,b,12,12\n", ["row 1 (line 2)", "both 12"]),
    ("p.csv", "clean,corrupted,correct_idx\na,b,12\n", ["no 'incorrect_idx' column", "a year, not a token id"]),
    ("p.csv", "clean,corrupted,label\na,b,52\n", ["'label' column", "greater-than", "a year"]),
    ("p.csv", "clean,corrupted,answer,correct_idx\na,b,c,1\n", ["mix answer/foil (text) with correct_idx"]),
    ("p.txt", "clean", ["unknown prompt file type '.txt'"]),
]


@pytest.mark.parametrize("name, content, words", BAD, ids=[f"{n}-{w[-1][:30]}" for n, _, w in BAD])
def test_bad_files_are_typed_errors_naming_file_row_and_value(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptFileError) as caught:
        prompt_files.read(path)
    message = str(caught.value)
    assert str(path) in message and all(word in message for word in words), message


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"clean": "caf\u00e9"'.encode("latin-1") + b"}\n")
    with pytest.raises(PromptFileError, match=r"p\.jsonl line 2: byte 0xe9 is not UTF-8"):
        prompt_files.read(path)
    # a byte-order mark (Excel's UTF-8 CSV) is no problem
    (tmp_path / "bom.csv").write_bytes("\ufeffclean,corrupted,answer\na,b, c\n".encode("utf-8"))
    assert prompt_files.read(tmp_path / "bom.csv")[0].clean == "a"


def test_missing_file_and_records(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        prompt_files.read(tmp_path / "nope.jsonl")
    with pytest.raises(PromptFileError, match="record 1: no 'corrupted' key"):
        prompt_files.from_records([ROWS[0], {"clean": "a", "answer": " b"}])
    with pytest.raises(PromptFileError, match="the records: no prompt pairs"):
        prompt_files.from_records([])


def test_task_options_are_checked_when_the_task_is_made(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(UnknownNameError, match="metric 'logit_diff'.*kl_divergence"):
        tasks.prompts(path, metric="logit_diff")
    no_foil = jsonl(tmp_path / "q.jsonl", [{k: v for k, v in r.items() if k != "foil"} for r in ROWS])
    with pytest.raises(PromptFileError, match="'logit_difference' needs a foil.*q.jsonl line 1"):
        tasks.prompts(no_foil, metric="logit_difference")
    with pytest.raises(circuits_errors().InvalidOptionError, match="no option 'metrics'"):
        tasks.prompts(path, metrics="probability")
    task = tasks.prompts(path)
    assert (task.metric_name, task.size, task.name) == ("logit_difference", 2, "prompts:p")
    assert tasks.prompts(no_foil).metric_name == "log_probability"
    assert tasks.get("prompts", source=str(path), metric="probability").metric_name == "probability"
    assert "prompts" in tasks.names() and "prompts" not in tasks.ready_made()
    with pytest.raises(circuits_errors().MissingOptionError, match="task 'prompts' needs the option source"):
        tasks.get("prompts")


def test_answers_glued_to_the_prompt_are_warned_about():
    with pytest.warns(UserWarning, match=r"1 of 1 answers continue their prompt without a space"):
        tasks.prompts([{"clean": "The capital of France is", "corrupted": "The capital of Spain is", "answer": "Paris"}])


def circuits_errors():
    import circuits

    return circuits.errors
