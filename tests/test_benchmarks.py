"""The benchmark scripts still run against today's API, at their smallest sizes (their figures are measured by
hand, `docs/benchmarks.md`; here only that they run and that the engines agree with their baselines). The
edge-attribution benchmark has its own test (`test_edge_attribution.py`) and the sweep benchmark's Ray part is
`test_sweep.py`'s."""

from __future__ import annotations

from benchmarks import cdt, clamped_training, evaluation, path_patching, patching
from circuits import models
from tests.references import RandomTokens


def test_activation_patching_benchmark():
    result = patching.main(["--cases", "a", "--repeats", "1"])["a"]
    assert result["max_abs_diff"] < 1e-5 and result["tl_s"] > 0 and result["ours_s"] > 0


def test_path_patching_benchmark():
    result = path_patching.main(["--cases", "a"])["a"]
    assert result["diff"] < 1e-5 and 0 < result["floor"] and 0 < result["engine"]


def test_cdt_benchmark_comparison():
    model = models.toy(n_layers=2, n_heads=2, d_model=16, d_vocab=32, n_ctx=16, seed=11)
    result = cdt.compare("tiny", model, RandomTokens(seq_len=8), n=2, receivers=2, repeats=1, loop=True)
    assert result["cdt_s"] > 0 and -1 <= result["spearman_logits"] <= 1


def test_clamped_training_benchmark():
    medians = clamped_training.main(["--steps", "1", "--rounds", "1", "--cases", "induction"])["induction"]
    assert set(medians) >= {"native, unclamped", "native, Layer0", "bridge, unclamped"}
    assert all(seconds > 0 for seconds in medians.values())


def test_evaluation_benchmark():
    result = evaluation.main(["--cases", "a", "--repeats", "1", "--loop-circuits", "1"])["a"]
    assert result["diff"] < 1e-5 and result["curve_s"] > 0 and result["loop_s"] > 0
