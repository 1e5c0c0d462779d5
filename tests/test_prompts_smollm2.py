"""Your own prompts on SmolLM2 (slow): a hand-written JSONL of 16 IOI prompts (tests/data/ioi_hand.jsonl) through
every engine for trained models, one command each, and the same prompts in auto-circuit's JSON and EAP-IG's CSV
giving the same batch. The full 16-prompt runs take minutes per engine on one CPU thread (docs/prompts.md); the
command-line runs here use 2 of the 16 prompts (make test stays near 5 minutes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import circuits
import tasks
from analyses import cli
from circuits import tokens
from tasks.prompt_pairs import PromptPairs

IOI = Path(__file__).parent / "data" / "ioi_hand.jsonl"
# The cheapest form of each engine on SmolLM2 (the full-size timings are in the note): path patching heads -> logits,
# EAP's one gradient pass, CD-T's head -> logits scores without head -> head edges.
OPTIONS = {"path_patching": ["--option", "receivers=logits", "--option", "per_input=false"],
           "edge_attribution": ["--option", "method=eap"], "cdt": ["--option", "receiver_count=0"]}


def rows() -> list[dict]:
    return [json.loads(line) for line in IOI.read_text().splitlines()]


@pytest.mark.slow
def test_the_hand_written_file_and_its_auto_circuit_and_eap_ig_twins_give_one_batch(bundled_model, tmp_path):
    model = bundled_model
    reference = tasks.prompts(IOI).batch(model, 16, 0)
    auto = {"seq_labels": [], "prompts": [{"clean": r["clean"], "corrupt": r["corrupted"], "answers": [r["answer"]],
                                           "wrong_answers": [r["foil"]]} for r in rows()]}
    (tmp_path / "ioi.json").write_text(json.dumps(auto))
    with (tmp_path / "ioi.csv").open("w", newline="") as handle:  # EAP-IG's columns; ids of SmolLM2's tokenizer
        import csv

        writer = csv.writer(handle)
        writer.writerow(["", "clean", "corrupted", "corrupted_hard", "correct_idx", "incorrect_idx"])
        for i, r in enumerate(rows()):
            writer.writerow([i, r["clean"], r["corrupted"], r["clean"], *(tokens.encode(model, r[key], bos=False)[0]
                                                                       for key in ("answer", "foil"))])
    for path in (tmp_path / "ioi.json", tmp_path / "ioi.csv"):
        batch = tasks.prompts(path).batch(model, 16, 0)
        for name in ("clean", "corrupted", "answer", "foil", "position"):
            assert torch.equal(getattr(batch, name), getattr(reference, name)), (path.name, name)
    assert reference.clean[:, 0].eq(model.tokenizer.bos_token_id).all()  # SmolLM2's BOS, as to_tokens adds it


@pytest.mark.slow
def test_the_hand_written_ioi_file_through_every_engine_one_command_each(bundled_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(PromptPairs, "default_model", lambda self: bundled_model)  # SmolLM2, loaded once per session
    seconds = {}
    for engine in circuits.engines.for_trained_models():
        out = tmp_path / engine
        start = time.perf_counter()
        code = cli.main(["discover", "--prompts", str(IOI), "--engine", engine, *OPTIONS.get(engine, []),
                         "--n", "2", "--out", str(out)])
        seconds[engine] = round(time.perf_counter() - start, 1)
        printed = capsys.readouterr().out
        assert code == 0 and (out / "graph.png").stat().st_size > 10_000
        graph = circuits.HeadGraph.from_json(out / "graph.json")
        assert graph.meta["n"] == 2 and graph.meta["task"] == "prompts:ioi_hand" and "SmolLM2" in graph.meta["model"]
        assert graph.meta["metric_clean"] > graph.meta["metric_corrupted"] + 1  # SmolLM2 does IOI on these prompts
        assert "top heads" in printed
    with capsys.disabled():
        print(f"\nCLI on SmolLM2, 2 of the 16 hand-written IOI prompts, seconds per engine: {seconds}")


@pytest.mark.slow
def test_word_spans_find_the_tokens_the_shipped_ioi_record_names(bundled_model):
    """SmolLM2's tokens carry their leading space (" Andrew"): word_spans map each word to its tokens through the
    tokenizer's offsets, giving the token positions the shipped IOI set records (BOS at 0)."""
    record = json.loads(tasks.ioi.DATA.read_text().splitlines()[0])
    assert record["clean"].split()[1] == record["meta"]["IO"] and record["clean"].split()[8] == record["meta"]["S"]
    pair = {key: record[key] for key in ("clean", "corrupted", "answer", "foil")}
    batch = tasks.prompts([{**pair, "word_spans": {"IO": 1, "S1": 3, "S2": 8, "end": 12}}]).batch(bundled_model, 1, 0)
    found = {name: (batch.spans[0] == i).nonzero().flatten().tolist() for i, name in enumerate(batch.span_names)}
    assert {name: found[name] for name in ("IO", "S1", "S2", "end")} == {
        name: [record["meta"]["positions"][name]] for name in ("IO", "S1", "S2", "end")}
