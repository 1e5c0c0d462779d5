"""Option validation and the normalisation's edge cases, each value named in its typed error (cases found
by the mutation run, docs/testing.md)."""

from __future__ import annotations

from dataclasses import asdict, replace
from importlib.metadata import version

import pytest
import torch

import circuits
from circuits.engines.kit import Baseline
from circuits.engines import ActivationPatching, PathPatching
from circuits.errors import InvalidOptionError, MetricError, UndefinedScoreError
from tests.references import RandomTokens

TASK = RandomTokens(seq_len=6)


@pytest.mark.parametrize("clean, corrupted", [(1.0, 1.0 + 1e-6), (0.0, 5e-7), (0.0, 1e-6), (1e3, 1e3 + 5e-4),
                                              (-2e3, -2e3 - 1e-3)])
def test_a_gap_within_one_millionth_is_undefined(clean, corrupted):
    """|gap| <= 1e-6 · max(1, |m_clean|, |m_corrupted|): absolute near 0, relative for large metrics."""
    with pytest.raises(UndefinedScoreError, match="no gap"):
        Baseline(clean, corrupted)


@pytest.mark.parametrize("clean, corrupted", [(1.0, 1.0 + 3e-6), (0.0, 1.5e-6), (1e3, 1e3 + 2e-3)])
def test_a_gap_beyond_one_millionth_is_a_score(clean, corrupted):
    baseline = Baseline(clean, corrupted)
    gap = clean - corrupted
    metric = lambda value: torch.tensor(value, dtype=torch.float64)  # noqa: E731
    assert float(baseline.score(metric(clean), "denoising")) == pytest.approx(1.0)
    assert float(baseline.score(metric(corrupted + gap / 4), "denoising")) == pytest.approx(0.25)
    assert float(baseline.score(metric(clean - gap / 4), "noising")) == pytest.approx(0.25)


def test_engine_options_are_normalised_and_checked():
    engine = PathPatching(receivers="logits", senders=["L0H1"], inputs=["k", "q"], positions=[2])
    assert (engine.receivers, engine.senders, engine.inputs, engine.positions) == (("logits",), ("L0H1",),
                                                                                    ("k", "q"), (2,))
    for bad, message in [(dict(inputs=()), r"inputs=\(\)"), (dict(inputs=("q", "q")), r"\('q', 'q'\)"),
                         (dict(positions=(-1,)), r"\(-1,\)"),
                         (dict(memory_mb=0.0), "memory_mb=0.0")]:
        with pytest.raises(InvalidOptionError, match=message):
            PathPatching(**bad)
    PathPatching(memory_mb=0.5)  # a small budget is a budget
    for engine_class in (ActivationPatching, PathPatching):
        with pytest.raises(InvalidOptionError, match="memory_mb=-1.0"):
            engine_class(memory_mb=-1.0)


@pytest.mark.parametrize("n", [0, -3])
def test_n_must_be_a_positive_number_of_prompts(n):
    model = circuits.models.toy(n_layers=1, n_heads=2, d_model=8, d_vocab=16, n_ctx=8)
    with pytest.raises(InvalidOptionError, match=f"got {n!r}"):
        circuits.discover(model, TASK, n=n)


class WrongShape:
    name = "wrong-shape"

    def batch(self, model, n, seed):
        return TASK.batch(model, n, seed)

    def metric(self, logits, batch):
        return TASK.metric(logits, batch)[:1]


def test_a_metric_of_the_wrong_shape_is_named():
    model = circuits.models.toy(n_layers=1, n_heads=2, d_model=8, d_vocab=16, n_ctx=8)
    # one pass: base and source prompts and the 2 heads' patched copies stacked, 4 x 3 rows
    with pytest.raises(MetricError, match=r"wrong-shape.metric returned \(1,\) for 3 prompts; expected one value "
                                          r"per prompt, a tensor of shape \(3,\) \(here 4 stacked copies of them: "
                                          r"shape \(12,\)\)"):
        circuits.discover(model, WrongShape(), n=3)


@pytest.mark.parametrize("engine", [ActivationPatching(direction="noising"), PathPatching(per_input=False)])
def test_meta_records_the_run(engine):
    model = circuits.models.toy(n_layers=2, n_heads=2, d_model=8, d_vocab=16, n_ctx=8, name="tiny-meta")
    graph = engine.run(model, TASK, n=3, seed=5)
    batch = TASK.batch(model, n=3, seed=5)
    with torch.no_grad():
        clean, corrupted = (TASK.metric(model(t)[:, -1], batch).mean().item() for t in (batch.clean, batch.corrupted))
    meta = graph.meta
    assert {k: meta[k] for k in ("engine", "options", "task", "model", "n", "seed", "version")} == {
        "engine": engine.name, "options": asdict(engine), "task": TASK.name, "model": "tiny-meta", "n": 3,
        "seed": 5, "version": version("tl-circuits")}
    assert circuits.__version__ == version("tl-circuits") != "unknown"
    assert meta["metric_clean"] == pytest.approx(clean, abs=1e-5)
    assert meta["metric_corrupted"] == pytest.approx(corrupted, abs=1e-5)
    assert engine.direction in meta["score"] and "normalised" in meta["score"]
    assert replace(engine) == engine  # frozen dataclass of options
