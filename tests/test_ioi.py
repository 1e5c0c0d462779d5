"""The IOI set shipped for SmolLM2 (tasks/data/ioi_smollm2.jsonl, made by analyses/ioi_data.py) and the head-role
analysis (analyses/ioi.py). The file checks need no model; the SmolLM2 checks are marked slow and kept short."""

from __future__ import annotations

import json
import re

import pytest
import torch

import tasks
from analyses import ioi as ioi_analysis
from analyses import ioi_heads
from circuits import tokens
from tasks import ioi


def records() -> list[dict]:
    return [json.loads(line) for line in ioi.DATA.read_text().splitlines()]


def recipe() -> dict:
    return json.loads(ioi.RECIPE.read_text())


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text)


def test_the_shipped_set_loads_as_prompt_pairs_with_its_spans_ignored_and_matches_its_recipe():
    rows, made = records(), recipe()
    task = tasks.prompts(ioi.DATA)
    assert task.size == len(rows) == made["kept"] and 0 < made["kept"] <= made["generated"]
    assert task.metric_name == "logit_difference"  # every row has a foil
    assert task.pairs[0].clean == rows[0]["clean"] and task.pairs[0].foil == rows[0]["foil"]
    for key in ("per_template_generated_kept", "per_order_generated_kept"):
        assert sum(g for g, _ in made[key].values()) == made["generated"]
        assert sum(k for _, k in made[key].values()) == made["kept"]
    assert set(made["per_order_generated_kept"]) == {"ABBA", "BABA"}


def test_every_record_is_an_abc_corrupted_ioi_prompt_with_consistent_spans():
    for row in records():
        meta, io, s = row["meta"], row["meta"]["IO"], row["meta"]["S"]
        clean, corrupted = words(row["clean"]), words(row["corrupted"])
        assert row["answer"] == " " + io and row["foil"] == " " + s and io != s
        assert clean.count(io) == 1 and clean.count(s) == 2
        a, b, c = meta["corrupted_names"]
        assert len({a, b, c, io, s}) == 5  # three other names, all different: no IOI information left
        swapped = [w for w, v in zip(clean, corrupted) if w != v]
        assert len(clean) == len(corrupted) and sorted(swapped) == sorted([io, s, s])
        assert row["clean"].endswith(" to") and row["clean"] == ioi.TEMPLATES[meta["template"]].format(
            A=io if meta["order"] == "ABBA" else s, B=s if meta["order"] == "ABBA" else io, S=s,
            place=meta.get("place"), object=meta.get("object"))
        p = meta["positions"]
        assert (p["IO"] < p["S1"]) == (meta["order"] == "ABBA") and p["S1+1"] == p["S1"] + 1
        assert max(p["IO"], p["S1"]) < p["S2"] < p["end"]


@pytest.mark.slow
def test_the_shipped_set_is_what_its_recipe_makes_and_the_model_gets_it_right(bundled_model):
    model, rows, made = bundled_model, records(), recipe()
    regenerated = {r["clean"]: r for r in ioi.generate(model, made["generated"], made["seed"])}
    assert len(regenerated) == made["generated"]  # no clean prompt twice
    assert all(regenerated[r["clean"]] == r for r in rows)  # same corruption, names and spans
    for row in rows[:8]:
        ids = tokens.encode(model, row["clean"])
        assert len(ids) == len(tokens.encode(model, row["corrupted"])) == row["meta"]["positions"]["end"] + 1
        for role, name in (("IO", row["meta"]["IO"]), ("S1", row["meta"]["S"]), ("S2", row["meta"]["S"])):
            assert tokens.pieces(model, [ids[row["meta"]["positions"][role]]]) == [" " + name]
    assert (ioi.logit_differences(model, rows[:8])["clean"] > 0).all()  # the filter held


@pytest.mark.slow
def test_the_quick_analysis_finds_roles_and_sets_them_beside_two_engines(bundled_model, tmp_path):
    summary = ioi_analysis.run(quick=True, out=tmp_path, model=bundled_model)
    assert (tmp_path / "heads.png").stat().st_size > 10_000 and (tmp_path / "summary.json").exists()
    assert set(summary["roles"]) == {"name_mover", "negative_name_mover", "s_suppression", "s_inhibition",
                                     "duplicate_token", "induction"}
    assert summary["logit_diff_mean"] > 0  # every shipped prompt has logit IO > S
    for engine in ioi_analysis.QUICK.engines:
        result = summary["engines"][engine]
        assert result["n"] == ioi_analysis.QUICK.n_engines and len(result["top"]) == ioi_analysis.QUICK.k
        for role, heads in summary["roles"].items():
            found = result["roles"][role]
            assert found["of"] == len(heads) and set(found["in_top_k"]) <= {h["head"] for h in heads}
            assert all(rank is None or 1 <= rank <= result["measured"] for rank in found["ranks"].values())
    for role, threshold_key in (("duplicate_token", "S2->S1"), ("induction", "S2->S1+1")):
        assert all(h[threshold_key] >= ioi_analysis.ATTENTION for h in summary["roles"][role])


@pytest.mark.slow
def test_repeated_random_tokens_find_induction_heads_that_attend_one_token_ahead(bundled_model):
    scores = ioi_heads.repeated(bundled_model, n=1, length=12)
    assert scores["induction"].shape == (bundled_model.cfg.n_layers, bundled_model.cfg.n_heads)
    # A pretrained model has induction heads: some head puts most of its attention on the token after the copy.
    assert scores["induction"].max() > 0.5 and scores["induction"].max() > 3 * scores["induction"].median()
    assert torch.all((scores["duplicate"] >= 0) & (scores["duplicate"] <= 1))
