"""The ``prompts`` task on a model of your own: a tiny random Llama saved as a Hugging Face folder (`tests.tiny_hf`,
one token per word) stands in for it. Tokenising is checked row by row before any forward pass; batches are padded on
the right and read at each row's last token; the formats give the same batch; the command line takes --prompts and
--model and writes nothing when the input is bad."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import circuits
import tasks
from analyses import cli
from circuits import tokens
from circuits.errors import MultiTokenAnswerError, PromptFileError, UnequalLengthError
from tests.test_prompt_files import ROWS, auto_circuit, csv_file, jsonl
from tests.tiny_hf import save_tiny_llama


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama") / "model")


@pytest.fixture(scope="module")
def model(folder):
    return circuits.models.load(folder)


LONGER = {"clean": "When Mary and John went to the store , John gave an email to",  # 15 tokens with BOS
          "corrupted": "When Mary and John went to the store , Paul gave an email to", "answer": " Mary", "foil": " John"}
SHORT = {"clean": "Then Anna and Lisa went to the park , Lisa gave a cup to",  # 15 tokens with BOS too
         "corrupted": "Then Anna and Lisa went to the park , Jane gave a cup to", "answer": " Anna", "foil": " Lisa"}


def test_rows_of_different_lengths_are_padded_right_and_read_at_their_last_token(model):
    task = tasks.prompts([LONGER, {**SHORT, "clean": "Then Anna and Lisa went to the park , Lisa gave to",
                                   "corrupted": "Then Anna and Lisa went to the park , Jane gave to"}])
    batch = task.batch(model, n=2, seed=0)
    by_answer = {tokens.encode(model, p.answer, bos=False)[0]: p for p in task.pairs}
    for i in range(2):
        row = by_answer[int(batch.answer[i])]
        ids = tokens.encode(model, row.clean)
        assert batch.position[i] == len(ids) - 1 and batch.clean[i, : len(ids)].tolist() == ids
        assert batch.corrupted[i, : len(ids)].tolist() == tokens.encode(model, row.corrupted)
        assert (batch.clean[i, len(ids):] == tokens.pad_id(model)).all()
        assert ids[0] == tokens.tokenizer_of(model).bos_token_id  # the model's BOS convention
    # the read-out really is the last real token: the metric equals the one of each row run alone
    logits = circuits.forward.logits(model, batch.clean, batch.position)
    for i in range(2):
        alone = circuits.forward.logits(model, batch.clean[i:i + 1, : batch.position[i] + 1])[0, -1]
        assert torch.allclose(logits[i], alone, atol=1e-5)


def test_seed_draws_rows_and_n_takes_that_many(model):
    task = tasks.prompts([LONGER, SHORT, ROWS[0]])
    orders = [tuple(task.batch(model, n=3, seed=s).answer.tolist()) for s in range(6)]
    assert len(set(orders)) > 1 and all(sorted(o) == sorted(orders[0]) for o in orders)
    assert task.batch(model, n=2, seed=0).size == 2 and task.batch(model, n=10, seed=0).size == 3
    assert torch.equal(task.batch(model, n=3, seed=4).clean, task.batch(model, n=3, seed=4).clean)


TOKEN_ERRORS = [  # (row, error, words)
    ({**SHORT, "corrupted": "Then Anna and Lisa went to the park , Jane gave a drink cup to"}, UnequalLengthError,
     ["record 0", "clean prompt is 15 tokens and the corrupted one 16"]),
    ({**SHORT, "answer": " Anna Rose"}, MultiTokenAnswerError, ["record 0", "answer ' Anna Rose' is 2 tokens",
                                                                "['Anna', 'Rose']", "first_token"]),
    ({**SHORT, "answer": "Anna"}, PromptFileError, ["record 0", "answer 'Anna' does not begin a new token",
                                                    "' Anna'"]),
    ({**SHORT, "clean": SHORT["clean"] + " ," * 20, "corrupted": SHORT["corrupted"] + " ," * 20}, PromptFileError,
     ["record 0", "is 35 tokens", "n_ctx=32"]),
]


@pytest.mark.parametrize("row, error, words", TOKEN_ERRORS, ids=["lengths", "multi-token", "glued", "too long"])
def test_token_level_problems_name_the_row_before_any_forward_pass(model, row, error, words, monkeypatch):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = tasks.prompts([row])
    monkeypatch.setattr(circuits.forward, "logits", lambda *a, **k: pytest.fail("a forward pass ran"))
    with pytest.raises(error) as caught:
        circuits.discover(model, task, engine="activation_patching", n=1)
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_first_token_reads_a_multi_token_answer_at_its_first_token(model):
    task = tasks.prompts([{**SHORT, "answer": " Anna Rose"}], first_token=True)
    assert task.batch(model, 1, 0).answer.tolist() == tokens.encode(model, " Anna", bos=False)
    same = tasks.prompts([{**SHORT, "answer": " Lisa Rose", "foil": " Lisa"}], first_token=True)
    with pytest.raises(PromptFileError, match=r"record 0: the answer ' Lisa Rose' and the foil ' Lisa' are the same "
                                              r"token \d+ \['Lisa'\]"):
        same.batch(model, 1, 0)


def test_token_ids_outside_the_vocabulary_name_the_row(model, tmp_path):
    path = csv_file(tmp_path / "eap.csv", "clean,corrupted,correct_idx,incorrect_idx",
                    [f'"{SHORT["clean"]}","{SHORT["corrupted"]}",30,31', f'"{SHORT["clean"]}","{SHORT["corrupted"]}",7,64'])
    task = tasks.prompts(path)
    with pytest.raises(PromptFileError, match=r"eap\.csv row 2 \(line 3\): foil is token id 64, outside this model's "
                                              r"vocabulary \[0, 64\)"):
        task.batch(model, 2, 0)


def test_the_formats_give_the_same_batch(model, tmp_path):
    """auto-circuit's JSON and EAP-IG's CSV (token ids written with this model's tokenizer, as EAP-IG's files are)
    give the batch the equivalent JSONL gives."""
    reference = tasks.prompts(jsonl(tmp_path / "p.jsonl", ROWS)).batch(model, 2, 0)
    ids = lambda text: tokens.encode(model, text, bos=False)[0]  # noqa: E731
    eap = csv_file(tmp_path / "eap.csv", ",clean,corrupted,correct_idx,incorrect_idx",
                   [f'{i},"{r["clean"]}","{r["corrupted"]}",{ids(r["answer"])},{ids(r["foil"])}' for i, r in enumerate(ROWS)])
    for path in (auto_circuit(tmp_path / "ac.json", ROWS), eap):
        batch = tasks.prompts(path).batch(model, 2, 0)
        for name in ("clean", "corrupted", "answer", "foil", "position"):
            assert torch.equal(getattr(batch, name), getattr(reference, name)), (path.name, name)


def test_every_metric_by_name(model):
    task = {name: tasks.prompts([LONGER, SHORT], metric=name) for name in circuits.metrics.NAMED}
    batch = task["kl_divergence"].batch(model, 2, 0)
    assert batch.clean_logprobs.shape == (2, model.cfg.d_vocab)
    logits = circuits.forward.logits(model, batch.clean, batch.position)
    assert torch.allclose(task["kl_divergence"].metric(logits, batch), torch.zeros(2), atol=1e-5)  # KL(p||p) = 0
    corrupted = circuits.forward.logits(model, batch.corrupted, batch.position)
    assert (task["kl_divergence"].metric(corrupted, batch) < 0).all()
    p = corrupted.softmax(-1)[torch.arange(2), batch.answer]
    assert torch.allclose(task["probability"].metric(corrupted, batch), p)
    assert torch.allclose(task["log_probability"].metric(corrupted, batch), p.log(), atol=1e-5)
    difference = corrupted[torch.arange(2), batch.answer] - corrupted[torch.arange(2), batch.foil]
    assert torch.allclose(task["logit_difference"].metric(corrupted, batch), difference)
    graph = circuits.discover(model, task["kl_divergence"], engine="activation_patching", n=2)
    assert graph.meta["metric_clean"] == pytest.approx(0, abs=1e-5) and graph.meta["metric_corrupted"] < 0


def test_every_engine_runs_on_a_model_folder(model):
    task = tasks.prompts([LONGER, SHORT, ROWS[0], ROWS[1]])
    for name in circuits.engines.for_trained_models():
        graph = circuits.discover(model, task, engine=name, n=4)
        assert graph.meta["n"] == 4 and graph.meta["task"] == "prompts" and graph.scores()


def test_the_command_line_takes_prompts_a_model_folder_and_engine_options(folder, tmp_path, capsys):
    path = jsonl(tmp_path / "p.jsonl", [LONGER, SHORT, *ROWS])
    out = tmp_path / "out"
    code = cli.main(["discover", "--prompts", str(path), "--model", str(folder), "--engine", "edge_attribution",
                     "--option", "method=eap", "--metric", "probability", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and (out / "graph.json").exists() and (out / "graph.png").exists()
    graph = circuits.HeadGraph.from_json(out / "graph.json")
    assert graph.meta["options"]["method"] == "eap" and graph.meta["n"] == 4 and graph.meta["task"] == "prompts:p"
    assert "top edges (effect 'direct')" in printed and "n=4" in printed
    top_edge = graph.top_edges(1, by="signed")[0]
    assert f"{top_edge[0]:<8}  {top_edge[1]:<10}" in printed


@pytest.mark.parametrize("args, words", [
    (["--task", "induction", "--metric", "probability"], "--metric applies to --prompts"),
    (["--task", "prompts"], "task 'prompts' needs the option source; expected e.g. get('prompts', source=...) (on the "
                            "command line: --prompts FILE"),
    (["--prompts", "BAD"], "line 2"),
    (["--prompts", "GOOD", "--option", "steps=two"], "--option steps=two: expected an integer"),
    (["--prompts", "GOOD", "--option", "nope=1"], "has no option 'nope'"),
    (["--prompts", "GOOD", "--option", "method=eapp"], "method='eapp'"),
    (["--prompts", "GOOD", "--model", "/no/such/folder"], "model folder '/no/such/folder' does not exist"),
    (["--prompts", "GOOD", "--model", "FOLDER", "--first-token", "--metric", "probability", "--n", "1",
      "--option", "direction=noising", "--direction", "denoising"], "disagree"),
])
def test_bad_input_on_the_command_line_writes_nothing(args, words, folder, tmp_path, capsys, monkeypatch):
    good = jsonl(tmp_path / "good.jsonl", ROWS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{}\n")
    args = [{"GOOD": str(good), "BAD": str(bad), "FOLDER": str(folder)}.get(a, a) for a in args]
    monkeypatch.setattr(circuits.models, "bundled", lambda: pytest.fail("the model loaded before the input was checked"))
    out = tmp_path / "out"
    code = cli.main(["discover", "--engine", "edge_attribution", *args, "--out", str(out)])
    assert code == 2 and words in capsys.readouterr().err and not out.exists()


def test_compare_on_a_prompt_file_says_its_prompts_are_not_held_out(folder, tmp_path, capsys):
    path = jsonl(tmp_path / "p.jsonl", [LONGER, SHORT, *ROWS])
    out = tmp_path / "compare"
    code = cli.main(["compare", "--prompts", str(path), "--model", str(folder), "--engine", "activation_patching",
                     "--engine", "cdt", "--quick", "--out", str(out)])
    assert code == 0 and (out / "compare_prompts-p.png").exists()
    record = json.loads((out / "compare_prompts-p.json").read_text())
    assert record["settings"]["n"] == 4 and record["held_out"].startswith("not held out: 4 of the 4")
    assert "not held out" in (out / "compare.md").read_text()


def test_a_sweep_spec_takes_a_prompt_file_and_reruns_when_it_changes(folder, tmp_path):
    (tmp_path / "data").mkdir()
    path = jsonl(tmp_path / "data" / "p.jsonl", [LONGER, SHORT])
    spec = tmp_path / "spec.toml"
    spec.write_text(f'tasks = [{{ prompts = "data/p.jsonl", metric = "probability" }}]\n'
                    f'models = [{{ name = "tiny", hub = "{folder}" }}]\nengines = ["activation_patching"]\nn = 2\n')
    parsed = circuits.sweeps.Spec.load(spec)
    [cell] = parsed.cells()
    assert cell.task.options == {"source": str(path.resolve()), "metric": "probability"}
    assert cell.folder.startswith("prompts-p.tiny.activation_patching.seed0.")
    first = circuits.sweep(spec, tmp_path / "out", progress=False)
    assert first.ok and first.ran == [cell.key]
    assert circuits.sweep(spec, tmp_path / "out", progress=False).skipped == [cell.key]
    jsonl(path, [LONGER, ROWS[0]])  # the same file name, other prompts
    again = circuits.sweep(spec, tmp_path / "out", progress=False)
    assert again.ran == [cell.key] and again.stale == {cell.folder: ["prompts"]}
    graph = circuits.HeadGraph.from_json(tmp_path / "out" / cell.folder / "graph.json")
    assert graph.meta["task"] == "prompts:p" and graph.meta["n"] == 2
    path.write_text("{}\n")  # a broken file is refused when the spec is read, before any cell runs
    with pytest.raises(PromptFileError, match=r"p\.jsonl line 1: no 'clean' key"):
        circuits.sweeps.Spec.load(spec)
