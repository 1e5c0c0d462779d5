"""Metrics on read-out logits, checked against numbers worked out by hand."""

import math

import torch

from circuits import metrics

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.5]])


def test_logit_difference():
    answer, foil = torch.tensor([0, 1]), torch.tensor([2, 0])
    assert torch.equal(metrics.logit_difference(LOGITS, answer, foil), torch.tensor([3.0, 1.0]))


def test_answer_probability():
    p = metrics.answer_probability(LOGITS, torch.tensor([0, 1]))
    first = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    second = math.exp(1.5) / (math.exp(1.5) + 2 * math.exp(0.5))
    assert torch.allclose(p, torch.tensor([first, second]))


def test_negative_squared_error():
    values = metrics.negative_squared_error(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0]))
    assert torch.equal(values, torch.tensor([-0.25, -9.0]))
