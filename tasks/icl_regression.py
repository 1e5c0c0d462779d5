"""In-context linear regression with one layer of multi-head softmax attention (He et al. 2025).

Data: x_l, x_q ~ N(0, I_d), β ~ N(0, I_d/d), y = βᵀx + ε with Var ε = σ² (default d = 5, L = 40, σ² = 0.1).
Tokens are continuous: z_l = [x_l; y_l], the query z_q = [x_q; 0]; a prompt is ``[batch, L + 1, d + 1]``
with the query last. These float inputs are the residual stream entering block 0 (`circuits.forward`):
they skip the (unused) token and positional embeddings, so engines and hooks run unchanged.

Model (`model_config`): one attention-only layer of H heads, d_model = d_head = d + 1, no LayerNorm, no
positional embedding, every bias frozen at zero. Two changes to the stock native module, both re-applied
whenever a model is built or loaded (`prepare`):

- read-out: ``d_vocab_out = 1`` and the unembedding fixed and frozen at e_{d+1}, so the logit is the y
  coordinate of the query's residual stream, 0 + attention output: the prediction ŷ_q;
- the query attends to the L context tokens only: the causal mask also masks the diagonal (token 0 keeps
  itself so that no row is empty). Context positions also get outputs; only the query's is read.

Clean prompt: a regression context; corrupted: the same xs (and query) with ys from an independent β
(``corruption="resample"``) or the ys permuted among the context tokens (``"shuffle"``). Metric: minus the
squared error of the prediction against the clean target y_q (noise included, as in the paper's MSE).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuits import PromptBatch, TrainingDefaults, forward, metrics, models, training
from circuits.errors import IncompatibleModelError, InvalidOptionError
from tasks import shipped

DATA_VERSION = 1
Schedule = tuple[tuple[float, int], ...]


def model_config(heads: int = 2, d: int = 5, L: int = 40, seed: int = 0) -> models.ToyConfig:
    """The paper's model: one layer of `heads` softmax heads of dimension d + 1, no LN/MLP/bias/positions."""
    if heads < 1:
        raise InvalidOptionError(f"heads must be >= 1; got {heads}")
    return models.ToyConfig(n_layers=1, n_heads=heads, d_model=d + 1, d_head=d + 1, d_vocab=1, d_vocab_out=1,
                            n_ctx=L + 1, attn_only=True, normalization=None, positional="none", bias=False,
                            seed=seed, name=f"icl_regression_h{heads}")


def prepare(model: Any) -> Any:
    """Fix the read-out at e_{d+1} (frozen) and stop the query attending to itself; a native module or a bridge."""
    for module in models.native_attention(model):
        n = module.causal_mask.shape[0]
        mask = torch.ones(n, n, dtype=torch.bool, device=module.causal_mask.device).triu(0)
        mask[0, 0] = False
        module.causal_mask = mask
    head = models.unembedding(model)
    if head.weight.shape[0] != 1:
        raise IncompatibleModelError("icl_regression models read out one number (d_vocab_out=1, see model_config)")
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, -1] = 1.0
    head.weight.requires_grad_(False)
    return model


class QueryReadout(torch.nn.Module):
    """Training view of a prepared one-layer native module: the prediction at the query position only.

    Computes exactly what the module computes at the last position (same parameters, biases and read-out;
    the query attends to the L context tokens), without the L attention rows that are never read: 13 ms
    instead of 112 ms a training step (docs/icl_regression.md). ``forward(inputs_embeds=z)`` returns ``[n, 1, 1]``.
    """

    def __init__(self, module: Any):
        super().__init__()
        if module.cfg.n_layers != 1 or not module.cfg.attn_only:
            raise InvalidOptionError("QueryReadout needs a one-layer attention-only module")
        self.module = module

    def forward(self, input_ids: Any = None, inputs_embeds: Tensor | None = None) -> Tensor:
        m, z = self.module, inputs_embeds
        if m.pos is not None:
            z = z + m.pos.weight[: z.shape[1]]
        attn, n, heads = m.layers[0].attn, z.shape[0], m.cfg.n_heads
        hidden = m.layers[0].ln1(z)
        query, context = hidden[:, -1], hidden[:, :-1]
        q = attn.q(query).view(n, heads, -1)
        k = attn.k(context).view(n, context.shape[1], heads, -1)
        v = attn.v(context).view(n, context.shape[1], heads, -1)
        pattern = torch.softmax(torch.einsum("nhe,nlhe->nhl", q, k) / attn.scale, dim=-1)
        out = attn.o(torch.einsum("nhl,nlhe->nhe", pattern, v).reshape(n, -1))
        return m.head(m.ln_out(z[:, -1] + out))[:, None]


@dataclass(frozen=True)
class Sample:
    """Regression problems: contexts x ``[n, L, d]``, y ``[n, L]``, queries x_q ``[n, d]``, y_q ``[n]``, β ``[n, d]``."""

    x: Tensor
    y: Tensor
    x_q: Tensor
    y_q: Tensor
    beta: Tensor


def tokens(x: Tensor, y: Tensor, x_q: Tensor) -> Float[Tensor, "n pos d_model"]:
    """Prompts ``[n, L + 1, d + 1]``: z_l = [x_l; y_l], then the query [x_q; 0]."""
    context = torch.cat([x, y[..., None]], dim=-1)
    query = torch.cat([x_q, torch.zeros_like(x_q[:, :1])], dim=-1)
    return torch.cat([context, query[:, None]], dim=1)


@dataclass(frozen=True)
class ICLRegression(TrainingDefaults):
    name: str = "icl_regression"
    d: int = 5
    L: int = 40
    noise: float = 0.1  # σ², the noise variance
    corruption: str = "resample"
    heads: int = 2  # of the default model
    # Adam (no weight decay) in phases of (learning rate, steps): the last, small rate settles the weights
    schedule: tuple[tuple[float, int], ...] = ((3e-3, 4000), (1e-3, 3000), (3e-4, 3000))
    train_batch: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.d < 1 or self.L < 1:
            raise InvalidOptionError(f"d and L must be >= 1; got d={self.d}, L={self.L}")
        if self.noise < 0:
            raise InvalidOptionError(f"noise is a variance and must be >= 0; got {self.noise}")
        if self.corruption not in ("resample", "shuffle"):
            raise InvalidOptionError(f"corruption={self.corruption!r}; expected 'resample' or 'shuffle'")

    # --- data ---------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Sample:
        d, L = self.d, self.L
        x = torch.randn(n, L, d, generator=generator)
        x_q = torch.randn(n, d, generator=generator)
        beta = torch.randn(n, d, generator=generator) / d ** 0.5
        noise = torch.randn(n, L + 1, generator=generator) * self.noise ** 0.5
        y = torch.einsum("nld,nd->nl", x, beta) + noise[:, :L]
        y_q = (x_q * beta).sum(-1) + noise[:, L]
        return Sample(x, y, x_q, y_q, beta)

    def training_sample(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        s = self.sample(self.train_batch, generator)
        return tokens(s.x, s.y, s.x_q), s.y_q

    @staticmethod
    def training_loss(outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean squared error of the prediction read at the query (last position)."""
        return ((outputs[:, -1, 0] - targets) ** 2).mean()

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        self.check_model(model)
        generator = torch.Generator().manual_seed(seed)
        s = self.sample(n, generator)
        if self.corruption == "resample":
            beta = torch.randn(n, self.d, generator=generator) / self.d ** 0.5
            noise = torch.randn(n, self.L, generator=generator) * self.noise ** 0.5
            y_corrupted = torch.einsum("nld,nd->nl", s.x, beta) + noise
        else:
            order = torch.rand(n, self.L, generator=generator).argsort(1)
            y_corrupted = s.y.gather(1, order)
        return PromptBatch(clean=tokens(s.x, s.y, s.x_q), corrupted=tokens(s.x, y_corrupted, s.x_q),
                           answer=s.y_q, position=torch.full((n,), self.L, dtype=torch.long))

    def metric(self, logits: Float[Tensor, "batch d_vocab_out"], batch: PromptBatch) -> Float[Tensor, " batch"]:
        return metrics.negative_squared_error(logits[:, 0], batch.answer)

    def check_model(self, model: Any) -> None:
        """A model for this task reads out one number (d_vocab_out = 1) from d_model = d + 1, n_ctx >= L + 1."""
        cfg = model.cfg
        if cfg.d_vocab_out != 1:
            raise IncompatibleModelError(
                f"icl_regression needs a continuous-input model with a scalar read-out (d_vocab_out=1, e.g. "
                f"tasks.icl_regression.model_config); got a token model with d_vocab_out={cfg.d_vocab_out}")
        if cfg.d_model != self.d + 1:
            raise InvalidOptionError(f"d={self.d} needs d_model = d + 1 = {self.d + 1}; the model has "
                                     f"d_model={cfg.d_model}")
        if cfg.n_ctx < self.L + 1:
            raise InvalidOptionError(f"L={self.L} context tokens plus the query need n_ctx >= {self.L + 1}; "
                                     f"the model has n_ctx={cfg.n_ctx}")

    # --- models -------------------------------------------------------------------------------------
    def validation_mse(self, model: Any, n: int = 8192, seed: int = 12345) -> float:
        """Mean squared error on `n` fresh problems (noise included)."""
        s = self.sample(n, torch.Generator().manual_seed(seed))
        device = forward.input_device(model)
        with torch.no_grad():
            out = training.outputs(model, tokens(s.x, s.y, s.x_q).to(device))
        return self.training_loss(out, s.y_q.to(device)).item()

    def train(self, module: Any, progress: bool = True, schedule: Schedule | None = None) -> list[dict[str, Any]]:
        """Train a native module in place (through `QueryReadout`); returns the evaluation history."""
        prepare(module)
        history: list[dict[str, Any]] = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a tiny model: more threads only add synchronisation (10x slower on a busy CPU)
        try:
            for phase, (lr, steps) in enumerate(schedule or self.schedule):
                history += training.train(
                    QueryReadout(module), self.training_sample, self.training_loss, steps=steps, lr=lr, weight_decay=0.0,
                    grad_clip=None, seed=self.seed + phase, eval_every=1000, progress=progress,
                    evaluate=lambda m: {"mse": self.validation_mse(m, n=2048)},
                    description=f"training icl_regression ({module.cfg.n_heads} heads, lr {lr:g})")
        finally:
            torch.set_num_threads(threads)
        return history

    def training(self, heads: int, schedule: Schedule | None = None, progress: bool = True) -> models.TrainedToy:
        """How the H-head model is trained (its recipe hash names the shipped and cached weights)."""
        schedule = tuple(schedule or self.schedule)
        spec = dict(task=self.name, d=self.d, L=self.L, noise=self.noise, schedule=schedule,
                    batch=self.train_batch, seed=self.seed, data=DATA_VERSION)
        return models.TrainedToy(model_config(heads, self.d, self.L, self.seed),
                                 partial(self.train, progress=progress, schedule=schedule), spec, shipped.FOLDER)

    def model(self, heads: int, schedule: Schedule | None = None, progress: bool = True, retrain: bool = False) -> Any:
        """The trained H-head model (bridge): shipped weights (package data), else trained on first use and cached
        under $CIRCUITS_CACHE; ``retrain=True`` trains it again."""
        return prepare(self.training(heads, schedule, progress).load(retrain=retrain))

    def default_model(self, retrain: bool = False) -> Any:
        """The 2-head model (``heads`` heads): shipped, or trained on first use and cached."""
        return self.model(self.heads, retrain=retrain)
