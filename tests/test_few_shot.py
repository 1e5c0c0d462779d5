"""The few-shot exemplar-label task: sequence structure checked against the fixed world by brute force, held-out
label pairs kept out of training, the corruption, and the induction strength of a head clamped on the target."""

from __future__ import annotations

import math

import pytest
import torch

from circuits import clamps, models
from circuits.errors import IncompatibleModelError, InvalidOptionError
from tasks.few_shot import LABEL_PAIRS, FewShot, model_config

TASK = FewShot(n_classes=40, noise=0.0)


def nearest(vectors: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return torch.cdist(vectors, table).argmin(-1)


def test_sequences_are_exemplar_label_pairs_and_the_answer_is_the_query_class_label():
    classes, labels, positions = TASK.world()
    s = TASK.sample(200, torch.Generator().manual_seed(0))
    raw = s.inputs - positions  # [n, 5, d]
    e1, l1, e2, l2, q = (nearest(raw[:, i], classes if i % 2 == 0 else labels) for i in range(5))
    assert torch.allclose(raw[:, 1], labels[l1], atol=1e-5) and torch.allclose(raw[:, 0], classes[e1], atol=1e-5)
    assert (e1 != e2).all() and ((q == e1) | (q == e2)).all()
    assert torch.equal(torch.where(q == e1, l1, l2), s.answer)
    train_pairs = {tuple(sorted(p)) for p in torch.stack([l1, l2], 1).tolist()}
    held = {LABEL_PAIRS[i] for i in TASK.held_out_pairs}
    assert train_pairs and not train_pairs & held
    test = TASK.sample(200, torch.Generator().manual_seed(1), held_out=True)
    assert {tuple(sorted(p)) for p in test.labels.tolist()} == held


def test_noise_is_fresh_per_instance_and_the_plateau_is_chance_between_two_labels():
    noisy = FewShot(n_classes=40)
    a, b = (noisy.sample(64, torch.Generator().manual_seed(3)).inputs, FewShot(n_classes=40, noise=0.0).sample(
        64, torch.Generator().manual_seed(3)).inputs)
    assert (a - b)[:, 0::2].std().item() == pytest.approx(0.5, rel=0.1)  # exemplars and query only
    assert torch.equal(a[:, 1::2], b[:, 1::2])
    assert noisy.plateau_loss == math.log(2)
    inputs, targets = noisy.training_sample(torch.Generator().manual_seed(0))
    assert inputs.shape == (128, 5, 64) and (targets[:, :-1] == -100).all() and (targets[:, -1] >= 0).all()


def test_batch_swaps_the_labels_in_the_corrupted_prompt():
    model = models.toy(model_config())
    batch = TASK.batch(model, n=16, seed=0)
    batch.validate(model)
    assert torch.allclose(batch.corrupted[:, 1] - TASK.world()[2][1], batch.clean[:, 3] - TASK.world()[2][3], atol=1e-5)
    assert torch.equal(batch.corrupted[:, [0, 2, 4]], batch.clean[:, [0, 2, 4]])
    assert (batch.answer != batch.foil).all()
    with pytest.raises(IncompatibleModelError, match="d_model=64"):
        TASK.batch(models.toy(n_layers=2, n_heads=2, d_model=16, d_vocab=5, n_ctx=5), n=2, seed=0)
    with pytest.raises(InvalidOptionError, match="held_out_pairs"):
        FewShot(held_out_pairs=(10,))


def test_a_head_clamped_on_the_matching_label_has_induction_strength_one():
    module = models.new_native(model_config())
    with clamps.attached(module, [clamps.Match("L1H3")]):
        strengths = TASK.induction_strength(module, n=256)
    assert strengths[3].item() == pytest.approx(1.0)
    free = TASK.induction_strength(module, n=256)
    assert free.abs().max() < 0.2  # an untrained model attends to both labels about equally
