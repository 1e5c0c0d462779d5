"""In-context learning of regular languages (Akyürek et al. 2024): each sequence comes from its own random
DFA (`tasks.dfa`); the model must infer the automaton's next-letter rules from the strings it has seen.

Clean prompt: a sequence of DFA A (held-out test automata), read out at a position in the second half of the
context whose next token is a letter. Corrupted: a sequence of a different test DFA B of the same length,
with the last `kept` tokens up to the read-out copied from the clean prompt (the current n-gram for
n = kept + 1), so only the in-context statistics differ. ``answer`` holds, per prompt, the mask of the
letters A allows next ``[batch, d_vocab]``. Metric: log of the probability mass on those letters.

Measures (`measure`): greedy DFA accuracy (the argmax is a letter A allows), total variation to A's true
next-letter distribution (uniform over the allowed letters) and to the in-context n-gram predictors
(`tasks.ngram`), over every position of held-out sequences whose next token is a letter.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Any, Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuits import PromptBatch, forward, hooks, models, training
from circuits.errors import IncompatibleModelError, InvalidOptionError
from tasks import dfa_training, shipped
from tasks.dfa import DFA, LETTERS, PAD, SEP, VOCAB, sequence, states_along
from tasks.dfa_training import Recipe
from tasks.ngram import head_scores, ngram_predictor

ORDERS = (1, 2, 3, 4)

DEFAULT_MODEL = models.ToyConfig(n_layers=2, n_heads=4, d_model=64, d_vocab=VOCAB, n_ctx=128, attn_only=False,
                                 d_mlp=256, normalization="LN", positional="standard", seed=0,
                                 name="regular_languages")
DEFAULT_RECIPE = Recipe()
# Trains in ~15 s on one thread: for tests and ``--quick`` (unigram-like, far from the default model).
QUICK_MODEL = replace(DEFAULT_MODEL, d_model=32, d_mlp=64, n_ctx=64, name="regular_languages_quick")
QUICK_RECIPE = Recipe(seq_len=64, strings=(10, 19), length=(1, 8), train_dfas=300, test_dfas=100, batch=16,
                      schedule=((3e-3, 400),), eval_every=200)


@lru_cache(maxsize=4)
def banks(recipe: Recipe) -> tuple[tuple[DFA, ...], tuple[DFA, ...]]:
    """The recipe's training and test automata (memoised: the default bank takes seconds to draw)."""
    train, test = dfa_training.banks(recipe)
    return tuple(train), tuple(test)


@dataclass(frozen=True)
class Evaluation:
    """Held-out sequences with what the DFA allows after each position."""

    tokens: Int[Tensor, "n pos"]
    allowed: Bool[Tensor, "n pos vocab"]  # letters the sequence's DFA allows after each position
    scored: Bool[Tensor, "n pos"]  # positions whose next token is a letter


def allowed_mask(dfa: DFA, tokens: list[int], width: int, vocab: int = VOCAB) -> Tensor:
    """``[width, vocab]``: the letters `dfa` allows after each of `tokens` (rows past the end are empty)."""
    mask = torch.zeros(width, vocab, dtype=torch.bool)
    for i, state in enumerate(states_along(dfa, tokens[:width])):
        mask[i, list(dfa.allowed(state))] = True
    return mask


@dataclass(frozen=True)
class RegularLanguages:
    name: str = "regular_languages"
    recipe: Recipe = field(default=DEFAULT_RECIPE)
    model_config: models.ToyConfig = field(default=DEFAULT_MODEL)
    kept: int = 2  # tokens up to the read-out shared by clean and corrupted prompts

    def __post_init__(self) -> None:
        if not 1 <= self.kept < self.recipe.seq_len // 2:
            raise InvalidOptionError(f"kept={self.kept} must lie in [1, seq_len/2 = {self.recipe.seq_len // 2})")
        if self.model_config.d_vocab < VOCAB:
            raise InvalidOptionError(f"the model's vocabulary d_vocab={self.model_config.d_vocab} cannot hold "
                                     f"{LETTERS} letters, the separator and padding ({VOCAB} tokens)")

    @classmethod
    def quick(cls) -> "RegularLanguages":
        """The small variant (tests, ``--quick``): 64-token contexts, a model trained in seconds."""
        return cls(recipe=QUICK_RECIPE, model_config=QUICK_MODEL)

    # --- prompts ------------------------------------------------------------------------------------
    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        self.check_model(model)
        return self.sample_batch(n, seed)

    def sample_batch(self, n: int, seed: int) -> PromptBatch:
        """`n` clean/corrupted pairs of test-DFA sequences on the CPU (see the module docstring)."""
        rng, test = random.Random(seed), banks(self.recipe)[1]
        r, width = self.recipe, self.recipe.seq_len
        clean, corrupted, allowed, position = [], [], [], []
        for _ in range(100 * n):
            if len(clean) == n:
                break
            a, b = rng.sample(test, 2)
            x = sequence(a, rng, r.strings, r.length, width).tokens
            y = sequence(b, rng, r.strings, r.length, width).tokens
            # read-out: second half, inside both sequences, next token a letter, no separator in the kept tokens
            choices = [p for p in range(width // 2, min(len(x), len(y)) - 1)
                       if x[p + 1] < LETTERS and SEP not in x[p - self.kept + 1:p + 1]]
            if not choices:
                continue
            p = rng.choice(choices)
            y[p - self.kept + 1:p + 1] = x[p - self.kept + 1:p + 1]
            clean.append(x)
            corrupted.append(y)
            allowed.append(allowed_mask(a, x, width)[p])
            position.append(p)
        if len(clean) < n:
            raise InvalidOptionError(f"sequences of {r.strings} strings of {r.length} letters rarely reach the "
                                     f"second half of seq_len={width}: found {len(clean)} of {n} read-out positions")
        return PromptBatch(clean=dfa_training.padded(clean, width, PAD),
                           corrupted=dfa_training.padded(corrupted, width, PAD),
                           answer=torch.stack(allowed).float(), position=torch.tensor(position))

    def metric(self, logits: Float[Tensor, "batch d_vocab_out"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        """log P(next token is a letter A allows): logsumexp over the allowed letters minus over all."""
        allowed = batch.answer.to(logits.device) > 0
        if allowed.shape != logits.shape:
            raise InvalidOptionError(f"the allowed-letter mask {tuple(allowed.shape)} does not fit the logits "
                                     f"{tuple(logits.shape)}")
        return logits.masked_fill(~allowed, float("-inf")).logsumexp(-1) - logits.logsumexp(-1)

    def check_model(self, model: Any) -> None:
        cfg = model.cfg
        out = cfg.d_vocab_out if cfg.d_vocab_out > 0 else cfg.d_vocab
        if cfg.d_vocab != VOCAB or out != VOCAB or cfg.n_ctx < self.recipe.seq_len:
            raise IncompatibleModelError(
                f"regular_languages prompts need d_vocab = d_vocab_out = {VOCAB} and n_ctx >= "
                f"{self.recipe.seq_len}; the model has d_vocab={cfg.d_vocab}, d_vocab_out={out}, n_ctx={cfg.n_ctx}")

    # --- measures -----------------------------------------------------------------------------------
    def evaluation(self, n: int = 64, seed: int = 12345) -> Evaluation:
        """`n` held-out sequences (test DFAs) with the allowed letters after each position."""
        rng, test, r = random.Random(seed), banks(self.recipe)[1], self.recipe
        rows, masks = [], []
        for _ in range(n):
            automaton = rng.choice(test)
            tokens = sequence(automaton, rng, r.strings, r.length, r.seq_len).tokens
            rows.append(tokens)
            masks.append(allowed_mask(automaton, tokens, r.seq_len))
        tokens = dfa_training.padded(rows, r.seq_len, PAD)
        return Evaluation(tokens, torch.stack(masks), dfa_training.next_letter_targets(tokens) >= 0)

    def measure(self, model: Any, data: Optional[Evaluation] = None) -> dict[str, float]:
        """Greedy DFA accuracy and total variation to the true DFA and to the 1..4-gram predictors."""
        data = data or self.evaluation()
        with torch.no_grad():
            probs = training.outputs(model, data.tokens).float().softmax(-1)
        return distribution_measures(probs, data, prefix="")

    def predictor_measures(self, data: Optional[Evaluation] = None) -> dict[str, float]:
        """The same measures for the n-gram predictors themselves (e.g. ``2gram_accuracy``)."""
        data = data or self.evaluation()
        out: dict[str, float] = {}
        for order in ORDERS:
            prediction = ngram_predictor(data.tokens, order, VOCAB)
            truth = truth_distribution(data)
            out[f"{order}gram_accuracy"] = greedy_accuracy(prediction, data)
            out[f"{order}gram_tv_dfa"] = total_variation(prediction, truth, data.scored)
        return out

    def head_scores(self, model: Any, n: int,
                    data: Optional[Evaluation] = None) -> tuple[Float[Tensor, "layer head"], float]:
        """Every head's n-gram score (`tasks.ngram.head_scores`) over the scored positions of held-out
        sequences, and the uniform-attention baseline."""
        data = data or self.evaluation()
        patterns = attention_patterns(model, data.tokens)
        scores = [head_scores(patterns[layer], data.tokens, n, data.scored)[0] for layer in range(len(patterns))]
        return torch.stack(scores), head_scores(patterns[0], data.tokens, n, data.scored)[1]

    # --- models -------------------------------------------------------------------------------------
    def training(self, progress: bool = True) -> models.TrainedToy:
        """How this task's model is trained (its recipe hash names the shipped and cached weights), with the
        measures along training written next to the cached weights (`history`)."""
        start = time.perf_counter()
        data = lru_cache(maxsize=1)(lambda: self.evaluation(n=32))  # drawn when training starts, not before

        def evaluate(model: Any) -> dict[str, float]:  # the measures along training, and the seconds so far
            return {**self.measure(model, data()), "seconds": time.perf_counter() - start}

        recipe = partial(dfa_training.train, recipe=self.recipe, evaluate=evaluate,
                         history_path=dfa_training.history_path(self.model_config, self.recipe), progress=progress)
        return models.TrainedToy(self.model_config, recipe, dfa_training.spec(self.recipe), shipped.FOLDER)

    def model(self, progress: bool = True, retrain: bool = False) -> Any:
        """This task's model (bridge): shipped weights (package data), else trained on first use and cached
        under $CIRCUITS_CACHE; ``retrain=True`` trains it again."""
        return self.training(progress).load(retrain=retrain)

    def default_model(self, retrain: bool = False) -> Any:
        """The 2-layer model (`DEFAULT_MODEL`): shipped weights; without them 9,000 steps, 33-36 min on one shared
        thread on first use, then cached."""
        return self.model(retrain=retrain)

    def history(self) -> Optional[list[dict[str, Any]]]:
        """The evaluation history written when this task's model was trained, or the one shipped with its weights
        (None if neither is there)."""
        path = dfa_training.history_path(self.model_config, self.recipe)
        if path.exists():
            return json.loads(path.read_text())["history"]
        trained = self.training(progress=False)
        record = trained.record()
        return record.get("history") if record and record.get("key") == trained.key() else None


def truth_distribution(data: Evaluation) -> Float[Tensor, "n pos vocab"]:
    allowed = data.allowed.float()
    return allowed / allowed.sum(-1, keepdim=True).clamp(min=1.0)


def total_variation(p: Tensor, q: Tensor, where: Tensor) -> float:
    return (0.5 * (p - q).abs().sum(-1))[where].mean().item()


def greedy_accuracy(probs: Tensor, data: Evaluation) -> float:
    hit = data.allowed.gather(-1, probs.argmax(-1, keepdim=True))[..., 0]
    return hit[data.scored].float().mean().item()


def distribution_measures(probs: Float[Tensor, "n pos vocab"], data: Evaluation, prefix: str = "") -> dict[str, float]:
    out = {f"{prefix}accuracy": greedy_accuracy(probs, data),
           f"{prefix}tv_dfa": total_variation(probs, truth_distribution(data), data.scored)}
    for order in ORDERS:
        out[f"{prefix}tv_{order}gram"] = total_variation(probs, ngram_predictor(data.tokens, order, VOCAB),
                                                        data.scored)
    return out


def attention_patterns(model: Any, tokens: Int[Tensor, "batch pos"]) -> list[Float[Tensor, "batch head query key"]]:
    """The attention pattern of every layer on `tokens` (CPU)."""
    patterns: dict[int, Tensor] = {}

    def grab(layer: int) -> Any:
        def hook(pattern: Tensor, hook: Any) -> None:
            patterns[layer] = pattern.detach().float().cpu()
        return hook

    layers = range(model.cfg.n_layers)
    with torch.no_grad(), hooks.attached(model, [(hooks.site(model, l, "pattern"), grab(l)) for l in layers]):
        forward.logits(model, tokens.to(forward.input_device(model)))
    return [patterns[layer] for layer in layers]
