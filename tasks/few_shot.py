"""Few-shot exemplar-label sequences (Singh et al. 2024): the setting where their induction heads form.

A sequence is ``e1 l1 e2 l2 q`` of float vectors (d_model): exemplars e of two different classes, each the
class's fixed random vector (norm ~ `class_norm`) plus fresh within-class noise (`noise` per coordinate) —
a stand-in for the paper's Omniglot features; labels l, fixed random vectors of 5 labels, a random ordered pair
per sequence drawn from 8 of the 10 label pairs (the other 2 are held out for testing); the query q, a fresh
instance of one of the two context classes. The model predicts the query's label (5 outputs); the loss is on
the query only. Every position also carries a fixed random positional vector: float inputs skip the model's
own positional embedding (`circuits.forward`), so the task supplies one.

Solving it needs an induction circuit: a layer-0 head copies each exemplar into the label after it, and a
layer-1 head matches the query to that exemplar and copies the label. Without one the best is chance between
the two context labels: loss log 2 (the plateau, `plateau_loss`). Progress measure per layer-1 head
(`induction_strength`): the query's attention to the correct label minus its attention to the wrong one.

Clean prompt: a held-out-pair sequence; corrupted: the same with the two labels swapped (the answer becomes
the foil). Metric: logit(answer) - logit(foil).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from typing import Any, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from circuits import PromptBatch, TrainingDefaults, metrics, models, training
from circuits.errors import IncompatibleModelError, InvalidOptionError
from tasks import shipped

N_LABELS = 5
N_POS = 5  # e1 l1 e2 l2 q
LABEL_PAIRS = tuple(combinations(range(N_LABELS), 2))  # 10 unordered pairs
DATA_VERSION = 1


def model_config(seed: int = 0, d_model: int = 64, n_heads: int = 8) -> models.ToyConfig:
    """2-layer attention-only, pre-LayerNorm, 8 heads per layer, d_model 64; float inputs, 5 outputs."""
    return models.ToyConfig(n_layers=2, n_heads=n_heads, d_model=d_model, d_vocab=N_LABELS, d_vocab_out=N_LABELS,
                            n_ctx=N_POS, attn_only=True, normalization="LN", positional="none", seed=seed,
                            name="few_shot")


@dataclass(frozen=True)
class Sequences:
    inputs: Tensor  # [n, 5, d_model]
    labels: Tensor  # [n, 2] label ids of l1, l2
    answer: Tensor  # [n] label id of the query
    which: Tensor  # [n] 0 if the query's class is e1's, 1 if e2's


@dataclass(frozen=True)
class FewShot(TrainingDefaults):
    name: str = "few_shot"
    n_classes: int = 1600
    class_norm: float = 4.0
    noise: float = 0.5  # within-class noise per coordinate
    label_norm: float = 4.0
    position_norm: float = 4.0
    d_model: int = 64
    held_out_pairs: tuple[int, ...] = (3, 8)  # indices into LABEL_PAIRS: (0, 4) and (2, 4), never trained on
    world_seed: int = 0  # the fixed class, label and position vectors
    train_batch: int = 128
    lr: float = 3e-4  # Adam: no weight decay, no gradient clipping
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None
    train_steps: int = 4500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_classes < 2:
            raise InvalidOptionError(f"n_classes must be >= 2; got {self.n_classes}")
        if self.noise < 0 or self.class_norm <= 0:
            raise InvalidOptionError(f"noise must be >= 0 and class_norm > 0; got {self.noise}, {self.class_norm}")
        bad = [i for i in self.held_out_pairs if not 0 <= i < len(LABEL_PAIRS)]
        if bad or len(set(self.held_out_pairs)) in (0, len(LABEL_PAIRS)):
            raise InvalidOptionError(f"held_out_pairs={self.held_out_pairs}: expected 1 to 9 distinct indices into "
                                     f"the {len(LABEL_PAIRS)} label pairs")

    # --- the fixed world ---------------------------------------------------------------------------
    def world(self) -> tuple[Tensor, Tensor, Tensor]:
        """(class vectors [n_classes, d], label vectors [5, d], position vectors [5, d]), fixed by world_seed."""
        generator = torch.Generator().manual_seed(self.world_seed)
        scale = 1 / math.sqrt(self.d_model)
        classes = torch.randn(self.n_classes, self.d_model, generator=generator) * self.class_norm * scale
        labels = torch.randn(N_LABELS, self.d_model, generator=generator) * self.label_norm * scale
        positions = torch.randn(N_POS, self.d_model, generator=generator) * self.position_norm * scale
        return classes, labels, positions

    def pairs(self, held_out: bool) -> Tensor:
        keep = [i for i in range(len(LABEL_PAIRS)) if (i in self.held_out_pairs) == held_out]
        return torch.tensor([LABEL_PAIRS[i] for i in keep])

    def sample(self, n: int, generator: torch.Generator, held_out: bool = False) -> Sequences:
        classes, label_vectors, positions = self.world()
        first = torch.randint(self.n_classes, (n,), generator=generator)
        second = (first + 1 + torch.randint(self.n_classes - 1, (n,), generator=generator)) % self.n_classes
        pairs = self.pairs(held_out)
        pair = pairs[torch.randint(len(pairs), (n,), generator=generator)]
        flip = torch.rand(n, generator=generator) < 0.5
        labels = torch.where(flip[:, None], pair.flip(1), pair)
        which = (torch.rand(n, generator=generator) < 0.5).long()
        query = torch.where(which.bool(), second, first)
        noise = torch.randn(n, 3, self.d_model, generator=generator) * self.noise
        inputs = torch.stack([classes[first] + noise[:, 0], label_vectors[labels[:, 0]],
                              classes[second] + noise[:, 1], label_vectors[labels[:, 1]],
                              classes[query] + noise[:, 2]], dim=1) + positions
        return Sequences(inputs, labels, labels.gather(1, which[:, None])[:, 0], which)

    # --- training ------------------------------------------------------------------------------------
    @property
    def plateau_loss(self) -> float:
        """Chance between the two context labels: what a model without an induction circuit reaches."""
        return math.log(2)

    def training_sample(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Inputs and targets: the query's label at the last position, -100 (ignored) elsewhere."""
        return self._with_targets(self.sample(self.train_batch, generator))

    def held_out_sample(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """`n` sequences with the held-out label pairs (the test set)."""
        return self._with_targets(self.sample(n, torch.Generator().manual_seed(seed), held_out=True))

    @staticmethod
    def _with_targets(s: Sequences) -> tuple[Tensor, Tensor]:
        targets = torch.full((s.inputs.shape[0], N_POS), -100, dtype=torch.long)
        targets[:, -1] = s.answer
        return s.inputs, targets

    # --- the engine contract -------------------------------------------------------------------------
    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        self.check_model(model)
        s = self.sample(n, torch.Generator().manual_seed(seed), held_out=True)
        corrupted = s.inputs.clone()
        corrupted[:, [1, 3]] = s.inputs[:, [3, 1]] - self.world()[2][[3, 1]] + self.world()[2][[1, 3]]
        foil = s.labels.gather(1, (1 - s.which)[:, None])[:, 0]
        return PromptBatch(clean=s.inputs, corrupted=corrupted, answer=s.answer, foil=foil,
                           position=torch.full((n,), N_POS - 1, dtype=torch.long))

    def metric(self, logits: Float[Tensor, "batch d_vocab_out"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        return metrics.logit_difference(logits, batch.answer, batch.foil)

    def check_model(self, model: Any) -> None:
        cfg = model.cfg
        d_out = cfg.d_vocab_out if cfg.d_vocab_out > 0 else cfg.d_vocab
        if cfg.d_model != self.d_model or d_out != N_LABELS or cfg.n_ctx < N_POS:
            raise IncompatibleModelError(
                f"few_shot needs a float-input model with d_model={self.d_model}, {N_LABELS} outputs and n_ctx >= "
                f"{N_POS} (tasks.few_shot.model_config); got d_model={cfg.d_model}, d_vocab_out={d_out}, "
                f"n_ctx={cfg.n_ctx}")

    # --- measures ------------------------------------------------------------------------------------
    def accuracy(self, model: Any, n: int = 1024, seed: int = 12345) -> float:
        """Held-out accuracy (held-out label pairs) of the query's label."""
        inputs, targets = self.held_out_sample(n, seed)
        with torch.no_grad():
            predictions = training.outputs(model, inputs)[:, -1].argmax(-1)
        return (predictions == targets[:, -1]).float().mean().item()

    def induction_strength(self, model: Any, n: int = 512, seed: int = 12345) -> Tensor:
        """``[n_heads]``: per layer-1 head, the query's attention to the correct label minus to the wrong one."""
        s = self.sample(n, torch.Generator().manual_seed(seed), held_out=True)
        captured = []
        handle = models.native_attention(model)[1].register_forward_hook(
            lambda _m, _a, output: captured.append(output[1].detach()))
        try:
            with torch.no_grad():
                training.outputs(model, s.inputs)
        finally:
            handle.remove()
        query_row = captured[-1][:, :, -1]  # [n, head, key]
        right = 1 + 2 * s.which  # the label position after the query's class
        rows = torch.arange(n)
        return (query_row[rows, :, right] - query_row[rows, :, 4 - right]).mean(0)

    def train(self, module: Any, progress: bool = True) -> list[dict[str, Any]]:
        def loss(out: Tensor, targets: Tensor) -> Tensor:
            return F.cross_entropy(out.flatten(0, 1), targets.flatten(), ignore_index=-100)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return training.train(module, self.training_sample, loss, steps=self.train_steps, lr=self.lr,
                                  weight_decay=self.weight_decay, grad_clip=self.grad_clip, seed=self.seed,
                                  eval_every=500,
                                  evaluate=lambda m: {"accuracy": self.accuracy(m, n=512)}, progress=progress,
                                  description="training few_shot model")
        finally:
            torch.set_num_threads(threads)

    def training(self, progress: bool = True) -> models.TrainedToy:
        """How the default model is trained (its recipe hash names the shipped and cached weights)."""
        spec = dict(task=self.name, n_classes=self.n_classes, class_norm=self.class_norm, noise=self.noise,
                    label_norm=self.label_norm, position_norm=self.position_norm, held_out=self.held_out_pairs,
                    world=self.world_seed, batch=self.train_batch, lr=self.lr, steps=self.train_steps,
                    seed=self.seed, data=DATA_VERSION)
        return models.TrainedToy(model_config(self.seed, self.d_model), partial(self.train, progress=progress), spec,
                                 shipped.FOLDER)

    def default_model(self, retrain: bool = False) -> Any:
        """The 2-layer model trained on this task: shipped weights (package data), else trained on first use and
        cached under $CIRCUITS_CACHE; ``retrain=True`` trains it again."""
        return self.training().load(retrain=retrain)
