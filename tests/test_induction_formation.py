"""`python -m analyses.induction_formation --quick` (one seed): files written, and the clamps move the crossing
step the way Singh et al. report — or the test fails and the numbers say where our models disagree."""

from __future__ import annotations

import json

from analyses import induction_formation


def test_quick_run_previous_token_and_layer0_clamps_form_earlier(tmp_path):
    results = induction_formation.main(["--quick", "--seeds", "0", "--out", str(tmp_path)])
    assert (tmp_path / "induction_loss.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())["induction"]
    assert "| no clamp |" in (tmp_path / "summary.md").read_text()
    crossing = {clamp: by_seed["0"] for clamp, by_seed in summary["crossing"].items()}
    none = crossing["no clamp"]
    assert none is not None, crossing
    assert crossing["previous token L0H0"] is not None and crossing["previous token L0H0"] < none, crossing
    assert crossing["layer 0 (Layer0)"] is not None and crossing["layer 0 (Layer0)"] < none, crossing
    assert crossing["ablate layer 0"] is None or crossing["ablate layer 0"] > none, crossing  # no previous-token path
    assert results["induction"]["previous_token_head"][0].startswith("L0H")
    strengths = summary["induction_strengths"]["0"]
    assert len(strengths) == 4 and max(strengths) > 0.3
