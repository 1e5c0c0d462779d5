"""The how-to pages' code runs as written: the engine of docs/adding_an_engine.md keeps the engine contract, and
the task of docs/adding_a_task.md runs through every engine for trained models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import circuits
from circuits import models
from circuits._state import preserved

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


def run_blocks(page: str) -> dict:
    namespace: dict = {}
    for block in python_blocks(page):
        exec(compile(block, str(DOCS / page), "exec"), namespace)
    return namespace


def test_the_engine_of_the_how_to_keeps_the_contract():
    namespace = run_blocks("adding_an_engine.md")
    engine, graph = namespace["ZeroAblation"](), namespace["graph"]
    assert graph.meta["engine"] == "zero_ablation" and len(graph.meta["score"]) > 20
    with pytest.raises(circuits.errors.InvalidOptionError, match="no option 'steps'.*memory_mb"):
        namespace["ZeroAblation"](steps=3)
    model = models.toy(n_layers=2, n_heads=2, d_model=16, d_vocab=64, n_ctx=48, seed=1)
    model.train()
    before = [m.training for m in model.modules()]
    task = namespace["task"]
    ran = engine.run(model, task, n=4, seed=0)
    assert [m.training for m in model.modules()] == before
    measured = engine.graph(model, engine.measure(model, task, task.batch(model, n=4, seed=0)))
    assert measured.scores() == ran.scores()
    # zero ablation by hand: the clean run with one head's z set to zero
    with preserved(model), torch.no_grad(), circuits.hooks.attached(model, [(circuits.hooks.site(model, 1, "z"), zero_head(1))]):
        model.eval()
        batch = task.batch(model, n=4, seed=0)
        ablated = float(task.metric(circuits.forward.logits(model, batch.clean, batch.position), batch).mean())
    clean, corrupted = ran.meta["metric_clean"], ran.meta["metric_corrupted"]
    assert ran.scores()["L1H1"] == pytest.approx((clean - ablated) / (clean - corrupted), abs=1e-4)


def zero_head(head: int):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z
    return hook


def test_the_task_of_the_how_to_runs_through_every_engine():
    namespace = run_blocks("adding_a_task.md")
    assert set(namespace["graphs"]) == set(circuits.engines.for_trained_models())
    assert all(len(graph.top(2, by="absolute")) == 2 for graph in namespace["graphs"].values())
    trainable = namespace["TrainableCopyFirst"]()
    inputs, targets = trainable.training_sample(torch.Generator().manual_seed(0))
    assert inputs.shape == (32, 8) and (targets[:, -1] == inputs[:, 0]).all()
    assert trainable.training_settings().lr == 1e-3 and trainable.resized(4).train_batch == 4
