"""Induction: predict the next token of a segment the second time it appears.

Clean prompt: random filler with a segment x1..xn (random length, random offsets) repeated once; the
read-out is inside the repeat, at x_k, and the answer is x_{k+1}. Corrupted: the same prompt with the
first occurrence resampled to y1..yn. Metric: logit(x_{k+1}) - logit(y_{k+1}), the foil being what
copying the corrupted prompt would give.

Segments have random lengths and offsets on purpose: with a fixed offset a model learns to copy by
position, with no previous-token head (measured: layer-0 previous-token attention 0.07).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from circuits import PromptBatch, TrainingDefaults, metrics, models, training
from circuits.errors import IncompatibleModelError, InvalidOptionError
from tasks import shipped

DEFAULT_MODEL = models.ToyConfig(n_layers=2, n_heads=4, d_model=64, d_vocab=64, n_ctx=64, attn_only=True,
                                 normalization="LN", seed=0, name="induction")


@dataclass(frozen=True)
class Prompts:
    """Sampled prompts and where their segments lie (all ``[batch]`` or ``[batch, pos]``)."""

    clean: Tensor
    corrupted: Tensor
    first: Tensor  # start of the first occurrence
    second: Tensor  # start of the repeat
    length: Tensor  # segment length n
    x: Tensor  # segment tokens [batch, max_length]
    y: Tensor  # resampled first occurrence [batch, max_length]


@dataclass(frozen=True)
class Induction(TrainingDefaults):
    name: str = "induction"
    seq_len: int = 48
    min_length: int = 6
    max_length: int = 16
    d_vocab: int = 64
    model_config: models.ToyConfig = field(default=DEFAULT_MODEL)
    train_steps: int = 1500
    train_batch: int = 64
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if not 2 <= self.min_length <= self.max_length:
            raise InvalidOptionError(f"segment lengths must satisfy 2 <= min_length <= max_length; "
                                     f"got {self.min_length}..{self.max_length}")
        if 2 * self.max_length > self.seq_len:
            raise InvalidOptionError(f"seq_len={self.seq_len} cannot hold two segments of {self.max_length}")
        if self.d_vocab < 2 * self.max_length + 2:
            raise InvalidOptionError(f"d_vocab={self.d_vocab} is too small for two distinct segments of "
                                     f"{self.max_length} plus filler")

    # --- sampling -----------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Prompts:
        """`n` prompts. Segment tokens are distinct, and filler never reuses x or y tokens."""
        def uniform(low: Tensor, high: Tensor) -> Tensor:  # integers in [low, high], per row
            return low + (torch.rand(n, generator=generator) * (high - low + 1)).long()

        zeros = torch.zeros(n, dtype=torch.long)
        length = uniform(zeros + self.min_length, zeros + self.max_length)
        first = uniform(zeros, self.seq_len - 2 * length)
        second = uniform(first + length, self.seq_len - length)
        order = torch.rand(n, self.d_vocab, generator=generator).argsort(dim=1)
        x, y = order[:, : self.max_length], order[:, self.max_length : 2 * self.max_length]
        pool = order[:, 2 * self.max_length :]
        filler = pool.gather(1, torch.randint(pool.shape[1], (n, self.seq_len), generator=generator))

        pos = torch.arange(self.seq_len)[None]
        in_first = (pos >= first[:, None]) & (pos < (first + length)[:, None])
        in_second = (pos >= second[:, None]) & (pos < (second + length)[:, None])
        index_first = (pos - first[:, None]).clamp(0, self.max_length - 1)
        index_second = (pos - second[:, None]).clamp(0, self.max_length - 1)
        repeat = torch.where(in_second, x.gather(1, index_second), filler)
        clean = torch.where(in_first, x.gather(1, index_first), repeat)
        corrupted = torch.where(in_first, y.gather(1, index_first), repeat)
        return Prompts(clean, corrupted, first, second, length, x, y)

    def training_sample(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Inputs and next-token targets; targets are -100 (ignored) outside the predictable repeat."""
        p = self.sample(self.train_batch, generator)
        pos = torch.arange(self.seq_len)[None]
        predictable = (pos >= p.second[:, None]) & (pos < (p.second + p.length - 1)[:, None])
        targets = torch.full_like(p.clean, -100)
        targets[:, :-1] = torch.where(predictable[:, :-1], p.clean[:, 1:], -100)
        return p.clean, targets

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        self.check_model(model)
        return self.sample_batch(n, seed)

    def sample_batch(self, n: int, seed: int) -> PromptBatch:
        """`n` prompts on the CPU, for any model (`batch` checks the model first; engines move batches to
        the model's input device)."""
        generator = torch.Generator().manual_seed(seed)
        p = self.sample(n, generator)
        k = (torch.rand(n, generator=generator) * (p.length - 1)).long()  # read out at x_k, k in [0, n-2]
        return PromptBatch(clean=p.clean, corrupted=p.corrupted, position=p.second + k,
                           answer=p.x.gather(1, (k + 1)[:, None])[:, 0],
                           foil=p.y.gather(1, (k + 1)[:, None])[:, 0])

    def metric(self, logits: Float[Tensor, "batch d_vocab"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        return metrics.logit_difference(logits, batch.answer, batch.foil)

    def check_model(self, model: Any) -> None:
        cfg = model.cfg
        if cfg.d_vocab < self.d_vocab or cfg.n_ctx < self.seq_len:
            raise IncompatibleModelError(
                f"induction prompts need d_vocab >= {self.d_vocab} and n_ctx >= {self.seq_len}; "
                f"the model has d_vocab={cfg.d_vocab}, n_ctx={cfg.n_ctx}")

    # --- the default model --------------------------------------------------------------------------
    def copying_accuracy(self, model: Any, n: int = 512, seed: int = 12345) -> float:
        """Held-out accuracy of predicting the next segment token inside the repeat."""
        inputs, targets = self.training_sample_for(n, seed)
        with torch.no_grad():
            predictions = training.outputs(model, inputs).argmax(-1)
        mask = targets != -100
        return (predictions[mask] == targets[mask]).float().mean().item()

    def training_sample_for(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        return Induction(**{**self.__dict__, "train_batch": n}).training_sample(torch.Generator().manual_seed(seed))

    def train(self, module: Any, progress: bool = True) -> list[dict[str, Any]]:
        loss = lambda logits, targets: F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # noqa: E731
        return training.train(module, self.training_sample, loss, steps=self.train_steps, lr=self.lr,
                              evaluate=lambda m: {"accuracy": self.copying_accuracy(m, n=256)},
                              eval_every=250, progress=progress, description="training induction model")

    def training(self, progress: bool = True) -> models.TrainedToy:
        """How the default model is trained (its recipe hash names the shipped and cached weights)."""
        spec = dict(task=self.name, seq_len=self.seq_len, lengths=(self.min_length, self.max_length),
                    d_vocab=self.d_vocab, steps=self.train_steps, batch=self.train_batch, lr=self.lr, data=1)
        return models.TrainedToy(self.model_config, partial(self.train, progress=progress), spec, shipped.FOLDER)

    def default_model(self, retrain: bool = False) -> Any:
        """The 2-layer attention-only induction model: shipped weights (package data), else trained on first use
        and cached; ``retrain=True`` trains it again."""
        return self.training().load(retrain=retrain)
