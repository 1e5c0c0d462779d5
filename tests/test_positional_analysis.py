"""analyses.positional: positional against plain edge circuits, --quick (induction on its default model)."""

from __future__ import annotations

import json
import math

import pytest

import circuits
from analyses import positional
from circuits.errors import InvalidOptionError, UnknownNameError
from circuits.evaluation.curves import trapezoid


def test_quick_form(tmp_path, capsys):
    results = positional.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert list(results) == ["induction"] and "## induction" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tasks"] == json.loads(json.dumps(results))
    assert (tmp_path / "faithfulness.png").stat().st_size > 0
    r = results["induction"]
    settings = positional.QUICK["induction"]
    assert r["labels"] == ["repeated", "next", "end", "other"]
    assert r["positional_total"] == r["edge_total"] * len(r["labels"]) == 81 * 4
    # every edge at every span is the model itself
    assert r["whole_positional_faithfulness"] == pytest.approx(1.0, abs=1e-5)
    assert [(row["fraction"], row["by"]) for row in r["sizes"]] == [(f, by) for f in settings.fractions
                                                                    for by in positional.SELECTIONS]
    for row in r["sizes"]:
        assert row["asked"] == int(row["fraction"] * r["positional_total"])
        kept = row["edges"]["positional"]
        assert kept <= row["asked"] and row["edges"]["plain"] <= kept  # plain asked for as many, both pruned
        assert sum(row["per_span"].values()) == kept  # every positional edge acts at one of the labels
        assert row["plain_edges_in_positional"] <= kept
    for kind in positional.KINDS:  # the areas are EdgeCurve's over the fractions asked
        signed = [row["faithfulness"][kind] for row in r["sizes"] if row["by"] == "signed"]
        assert r["areas"][kind]["cpr"] == pytest.approx(trapezoid(settings.fractions, signed))
    scores = [abs(t["score"]) for t in r["top_edges"]]
    assert scores == sorted(scores, reverse=True) and all("@" in t["edge"] for t in r["top_edges"])
    key = r["key_edge"]
    assert key["edge"] == f"{key['previous_token_head']}->{key['induction_head']}<k>"
    # the plain score is the sum of the spans' (the graph's identity), and every rank is a place in the ranking
    assert math.fsum(v["score"] for v in key["at"].values()) == pytest.approx(key["plain"]["score"], abs=1e-6)
    assert len({v["rank"] for v in key["at"].values()}) == 4 and all(1 <= v["rank"] <= key["of"]
                                                                      for v in key["at"].values())
    exact = r["key_edge_path_patching"]
    assert list(exact) == list(positional.DIRECTIONS)
    for record in exact.values():
        assert record["edge"] == key["edge"] and set(record["at"]) == set(r["labels"]) and record["of"] == key["of"]
    assert summary["headline"]["induction/key_edge_rank@next"] == key["at"]["next"]["rank"]


def test_circuits_chosen(induction, induction_model):
    graph = circuits.discover(induction_model, induction, engine="edge_attribution", positions="spans", n=4,
                              method="eap", progress=False)
    for row in positional.choose(graph, (0.05, 0.1)):
        chosen = row["circuits"]
        assert chosen["positional"] and all(e.position in graph.position_kind()[1] for e in chosen["positional"])
        assert all(e.position is None for e in chosen["plain"])
        assert chosen["plain"] == graph.circuit(k=len(chosen["positional"]), by=row["by"])
    ranked = positional.ranking(graph)
    assert len(ranked) == 81 * 4 and abs(ranked[0][1]) == max(abs(s) for _, s in ranked)


def test_bad_tasks():
    with pytest.raises(InvalidOptionError, match="ioi"):
        positional.run(["ioi"], quick=True)  # --quick runs induction only
    with pytest.raises(UnknownNameError):
        positional.load("nope")
