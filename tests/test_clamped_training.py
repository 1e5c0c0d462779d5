"""The clamped-training engine: its fast path (torch hooks on a plain copy) against training the bridge itself
with TransformerLens hooks on hook_z; scores and edges from the runs' losses; typed errors before any step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import circuits
from circuits import clamps, hooks, models, training
from circuits.clamped_runs import HELD_OUT_OFFSET
from circuits.engines import ClampedTraining
from circuits.errors import IncompatibleModelError, InvalidOptionError, UnknownNameError
from tasks.icl_regression import ICLRegression
from tasks.induction import Induction
from tests.references import zero_head

CONFIG = models.ToyConfig(n_layers=2, n_heads=2, d_model=16, d_vocab=16, n_ctx=16, seed=5, name="tiny")
TASK = Induction(seq_len=14, min_length=3, max_length=6, d_vocab=16, train_batch=8, model_config=CONFIG)
FAST = dict(steps=6, eval_every=3, progress=False)


def loss_fn(logits, targets):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def bridge_run(zeroed: list[tuple[int, int]], n: int, seed: int) -> float:
    """Literal reference: train a fresh bridge with hook_z zeroed for `zeroed` heads (TransformerLens hooks, the
    slow path), then its held-out loss with the same hooks."""
    bridge = models.toy(CONFIG)
    fwd = [(hooks.site(bridge, layer, "z"), zero_head(head)) for layer, head in zeroed]
    training.train(bridge, TASK.training_sample, loss_fn, steps=FAST["steps"], lr=TASK.lr, seed=seed, hooks=fwd,
                   progress=False)
    inputs, targets = TASK.training_sample_for(n, seed + HELD_OUT_OFFSET)
    bridge.eval()
    with torch.no_grad(), hooks.attached(bridge, fwd):
        return loss_fn(bridge(inputs), targets).item()


def test_runs_equal_training_the_bridge_with_hooks_and_scores_follow_from_the_losses():
    graph = ClampedTraining(heads=("L0H1", "L1H0"), interaction_heads=2, **FAST).run(models.toy(CONFIG), TASK, n=8, seed=2)
    base = bridge_run([], 8, 2)
    assert graph.meta["final_loss"] == pytest.approx(base, abs=1e-4)
    scale = abs(graph.meta["initial_loss"] - graph.meta["final_loss"])
    for name, zeroed in (("L0H1", [(0, 1)]), ("L1H0", [(1, 0)])):
        node = graph.nx.nodes[name]
        assert node["final_loss"] == pytest.approx(bridge_run(zeroed, 8, 2), abs=1e-4)
        assert node["score"] == pytest.approx((node["final_loss"] - graph.meta["final_loss"]) / scale)
        assert len(node["curve"]) == len(graph.meta["steps"]) == 3  # steps 0, 3, 6
    assert graph.nx.nodes["L0H0"].get("score") is None  # not asked for: unmeasured
    both = graph.nx.edges["L0H1", "L1H0"]
    assert both["final_loss"] == pytest.approx(bridge_run([(0, 1), (1, 0)], 8, 2), abs=1e-4)
    effects = [graph.nx.nodes[h]["final_loss"] - graph.meta["final_loss"] for h in ("L0H1", "L1H0")]
    assert both["score"] == pytest.approx((both["final_loss"] - graph.meta["final_loss"] - sum(effects)) / scale)


def test_a_config_starts_from_its_seeded_initialisation_and_crossings_use_the_threshold():
    graph = circuits.discover(CONFIG, TASK, engine="clamped_training", n=8, seed=0, interaction_heads=0, plateau=100.0, **FAST)
    assert len(graph.scores()) == 4 and graph.nx.number_of_edges() == 0
    assert graph.meta["threshold"] == 50.0
    assert all(graph.nx.nodes[h]["crossing_step"] == 0 for h in graph.heads())  # every loss < 50 from the start
    assert all(graph.nx.nodes[h]["crossing_delay"] == 0 for h in graph.heads())
    same = circuits.discover(models.toy(CONFIG), TASK, engine="clamped_training", n=8, seed=0, interaction_heads=0,
                             plateau=100.0, **FAST)
    assert same.scores() == graph.scores()


class FloatAnswers:
    """A task without a training objective whose answers are floats: nothing to train on."""

    name = "float_answers"

    def batch(self, model, n, seed):
        x = torch.randint(model.cfg.d_vocab, (n, 6), generator=torch.Generator().manual_seed(seed))
        return circuits.PromptBatch(clean=x, corrupted=x, answer=torch.zeros(n), position=torch.full((n,), 5))

    def metric(self, logits, batch):
        return logits[:, 0]

    def default_model(self):
        return models.toy(CONFIG)


@pytest.mark.parametrize("model, task, options, error, named", [
    (CONFIG, TASK, dict(heads=("L2H0",)), UnknownNameError, "L2H0"),
    (CONFIG, TASK, dict(clamps=(clamps.PreviousToken("L0H7"),)), UnknownNameError, "L0H7"),
    (CONFIG, TASK, dict(clamps=(clamps.Layer0(reader=2),)), InvalidOptionError, "reader=2"),
    (CONFIG, Induction(seq_len=20, min_length=3, max_length=6, d_vocab=16), {}, IncompatibleModelError, "n_ctx=16"),
    (CONFIG, FloatAnswers(), {}, IncompatibleModelError, "float answers"),
    (CONFIG, ICLRegression(), {}, IncompatibleModelError, "d_vocab_out"),
    (torch.nn.Linear(2, 2), TASK, {}, IncompatibleModelError, "Linear"),
])
def test_bad_input_is_refused_before_the_first_step(monkeypatch, model, task, options, error, named):
    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("circuits.engines.clamped_training.train_clamped", never)
    with pytest.raises(error, match=named):
        ClampedTraining(**FAST, **options).run(model, task, n=4, seed=0)


def test_bad_options_are_refused():
    for options, named in ((dict(steps=0), "steps"), (dict(mode="half"), "half"), (dict(interaction_heads=-1), "interaction_heads"),
                           (dict(lr=0.0), "lr"), (dict(plateau=-1.0), "plateau"), (dict(heads=("H1",)), "H1")):
        with pytest.raises((InvalidOptionError, UnknownNameError), match=named):
            ClampedTraining(**options)


def test_extra_clamps_apply_in_every_run_and_a_log2_plateau_comes_from_the_task():
    class WithPlateau(Induction):
        plateau_loss = math.log(2)

    task = WithPlateau(**{k: getattr(TASK, k) for k in TASK.__dataclass_fields__ if k != "name"})
    plain = ClampedTraining(heads=("L1H1",), interaction_heads=0, **FAST).run(models.toy(CONFIG), task, n=8, seed=1)
    clamped = ClampedTraining(heads=("L1H1",), interaction_heads=0, clamps=(clamps.PreviousToken("L0H0"),), **FAST).run(
        models.toy(CONFIG), task, n=8, seed=1)
    assert plain.meta["threshold"] == clamped.meta["threshold"] == pytest.approx(math.log(2) / 2)
    assert clamped.meta["final_loss"] != plain.meta["final_loss"]
    assert clamped.meta["options"]["clamps"] == ({"head": "L0H0", "strength": 1.0},)


def test_parallel_workers_give_the_same_graph():
    """``workers=2`` trains the runs in spawned processes: same seed, same batches, so the same graph."""
    options = dict(interaction_heads=2, **FAST)
    serial = circuits.discover(CONFIG, TASK, engine="clamped_training", n=8, seed=0, **options)
    parallel = circuits.discover(CONFIG, TASK, engine="clamped_training", n=8, seed=0, workers=2, **options)
    assert parallel.scores() == serial.scores()
    assert {e: d["score"] for e, d in parallel.nx.edges.items()} == {e: d["score"] for e, d in serial.nx.edges.items()}
    assert parallel.nx.number_of_edges() == 1
