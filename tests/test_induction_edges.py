"""analyses.induction_edges: every graph engine's edge circuits on the default induction model, --quick."""

from __future__ import annotations

from analyses import induction_edges


def test_quick_form(tmp_path, capsys, induction_model):
    results = induction_edges.main(["--quick", "--out", str(tmp_path), "--n", "4"])
    printed = capsys.readouterr().out
    assert (tmp_path / "summary.json").exists()
    # the mechanism's heads come from attention patterns; the default model's previous-token head is L0H3
    assert results["previous_token_head"] == "L0H3" and results["induction_head"].startswith("L1")
    assert results["key_edge"] == f"L0H3->{results['induction_head']}<k>"
    for label in ("path_patching", "cdt", "eap"):
        rows = results["engines"][label]["rows"]
        assert {(r["by"], r["fraction"]) for r in rows} == {(b, f) for b in ("absolute", "signed")
                                                              for f in induction_edges.FRACTIONS}
        for row in rows:
            assert row["edges"] <= row["k"] and row["k"] == int(row["fraction"] * 81)  # 81 edges; pruned
            assert row["key_edge"] == (results["key_edge"] in row["circuit"])
        assert f"| {label} |" in printed
    # CD-T's two effects are chosen apart: a share circuit never holds the read-out edge, a total one never the key
    for row in results["engines"]["cdt"]["rows"]:
        assert not (row["effect"] == "share" and row["read_out_edge"]) and not (row["effect"] == "total"
                                                                               and row["key_edge"])
