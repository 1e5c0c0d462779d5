"""How the regular-language models are trained (kept apart from the task so that editing the task's
measures does not change the cache key of its trained models: `circuits.models.cached` hashes the module
that defines the training function).

Next-token prediction on sequences of random DFAs (`tasks.dfa`) drawn from a fixed bank of training
automata, fresh strings every step; targets are the next letters (a next separator or padding is ignored,
as in the paper's data: where a string ends is not predictable). AdamW through `circuits.training.train`
in phases of constant learning rate (a stepped decay), evaluated every `eval_every` steps.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from circuits import models, training
from circuits.errors import IncompatibleModelError
from tasks.dfa import DFA, PAD, SEP, VOCAB, dfa_bank, sequence

DATA_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """Data and optimisation of one model."""

    seq_len: int = 128  # the model's context; longer sequences are cut (256 costs 8x per step here)
    strings: tuple[int, int] = (10, 19)  # strings per sequence (paper: 10..19)
    length: tuple[int, int] = (1, 12)  # letters per string (paper: 1..49; capped so sequences fit seq_len)
    train_dfas: int = 5000
    test_dfas: int = 500
    batch: int = 32
    schedule: tuple[tuple[float, int], ...] = ((2e-3, 3000), (1e-3, 3000), (4e-4, 2000), (1e-4, 1000))
    eval_every: int = 250
    seed: int = 0

    @property
    def steps(self) -> int:
        return sum(steps for _, steps in self.schedule)


def banks(recipe: Recipe) -> tuple[list[DFA], list[DFA]]:
    """The training and test automata (disjoint by transition table)."""
    train = dfa_bank(recipe.train_dfas, seed=recipe.seed)
    test = dfa_bank(recipe.test_dfas, seed=recipe.seed + 1, exclude=frozenset(d.key for d in train))
    return train, test


def padded(rows: Sequence[list[int]], width: int, fill: int) -> Tensor:
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :min(len(row), width)] = torch.tensor(row[:width], dtype=torch.long)
    return out


def next_letter_targets(tokens: Tensor) -> Tensor:
    """Next-token targets with separators, padding and the last position ignored (-100)."""
    targets = torch.full_like(tokens, -100)
    targets[:, :-1] = tokens[:, 1:]
    targets[(targets == SEP) | (targets == PAD)] = -100
    return targets


def sampler(recipe: Recipe, bank: Sequence[DFA]) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
    """``sample(generator) -> (tokens, targets)``: a batch of sequences, each from a DFA drawn from `bank`."""
    def sample(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
        rows = [sequence(rng.choice(bank), rng, recipe.strings, recipe.length, recipe.seq_len).tokens
                for _ in range(recipe.batch)]
        tokens = padded(rows, recipe.seq_len, PAD)
        return tokens, next_letter_targets(tokens)
    return sample


def loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def train(module: Any, recipe: Recipe, evaluate: Optional[Callable[[Any], dict[str, float]]] = None,
          history_path: Optional[Path] = None, progress: bool = True) -> list[dict[str, Any]]:
    """Train a native module in place (one thread); write the evaluation history to `history_path`."""
    if module.cfg.d_vocab < VOCAB or module.cfg.n_ctx < recipe.seq_len:
        raise IncompatibleModelError(f"the model needs d_vocab >= {VOCAB} and n_ctx >= {recipe.seq_len}; it has "
                                     f"d_vocab={module.cfg.d_vocab}, n_ctx={module.cfg.n_ctx}")
    train_bank, _ = banks(recipe)
    sample = sampler(recipe, train_bank)
    history: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: more threads only add synchronisation on a shared CPU
    done = 0
    try:
        for phase, (lr, steps) in enumerate(recipe.schedule):
            records = training.train(module, sample, loss, steps=steps, lr=lr, seed=recipe.seed + phase,
                                     evaluate=evaluate, eval_every=recipe.eval_every if evaluate else 0,
                                     progress=progress, description=f"regular_languages (lr {lr:g})")
            history += [{**r, "step": r["step"] + done, "lr": lr} for r in records]
            done += steps
    finally:
        torch.set_num_threads(threads)
    if history_path is not None:
        history_path.parent.mkdir(parents=True, exist_ok=True)
        history_path.write_text(json.dumps({"recipe": asdict(recipe), "history": history}, indent=1))
    return history


def spec(recipe: Recipe) -> dict[str, Any]:
    """What `models.cached` keys the weights on, besides the config and this module's code."""
    return {"task": "regular_languages", "training": asdict(recipe), "data": DATA_VERSION}


def history_path(config: models.ToyConfig, recipe: Recipe) -> Path:
    """Where `train` leaves the history of the model `models.cached` keeps for (config, recipe)."""
    key = config.key(recipe=models.recipe_fingerprint(train), **spec(recipe))
    return models.cache_dir() / f"{config.name}-{key}.history.json"
