"""The engine kit: what engines build on, each piece once.

- options: `check_direction`, `check_memory`; budgets: `copies_per_pass`, `chunks`;
- metrics: `metric_means` (the task's metric on stacked copies of a batch, checked for shape and NaN) and
  `Baseline`, whose one method `normalise` turns a metric change into the normalised score of every engine;
- runs: `read_out_and_cache` (read-out logits plus cached activations, one pass), `Runs` (the base and source
  runs of a batch, stacked into one pass, with the denoising/noising swap), `PatchRuns` (restarting the base
  run at a patched layer), `block_activations` (one block run with replaced and captured activations);
- `Measurement`: what every engine's ``measure(model, task, batch)`` returns.

`circuits.engines.base` holds the engine protocol and the session an engine runs in.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Optional, TypeVar

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from circuits import forward, hooks
from circuits.errors import (HookNotFiredError, IncompatibleModelError, InvalidOptionError, MetricError,
                             UndefinedScoreError)
from circuits._task import PromptBatch

Direction = Literal["denoising", "noising"]
DIRECTIONS = ("denoising", "noising")
Site = tuple[int, str]  # (layer, kind of `circuits.hooks.SITES`)
V = TypeVar("V")
_GAP_REQUIRED: ContextVar[bool] = ContextVar("gap_required", default=False)


@contextmanager
def gap_required() -> Iterator[None]:
    """Inside, `Runs.prepare` refuses prompts whose clean and corrupted metrics are equal (`UndefinedScoreError`)
    as soon as it has measured them, before an engine's long work: `EngineBase.run` normalises what it measures,
    so it fails fast; ``engine.measure`` alone needs no gap."""
    token = _GAP_REQUIRED.set(True)
    try:
        yield
    finally:
        _GAP_REQUIRED.reset(token)


def gap_is_required() -> bool:
    """Whether the caller asked (`gap_required`) for prompts with no clean/corrupted gap to be refused."""
    return _GAP_REQUIRED.get()


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InvalidOptionError(f"direction={direction!r}; expected one of {DIRECTIONS}")


def check_memory(memory_mb: float) -> None:
    if not memory_mb > 0:
        raise InvalidOptionError(f"memory_mb={memory_mb!r}; expected a positive number of megabytes")


def metric_means(task: Any, logits: Tensor, batch: PromptBatch, copies: int = 1) -> Tensor:
    """Metric means of `copies` stacked copies of `batch`: logits ``[copies * batch, vocab]`` -> ``[copies]``.
    One call of the task's metric on the repeated batch, checked for shape and NaN."""
    stacked = batch if copies == 1 else batch.repeated(copies)
    values = task.metric(logits, stacked)
    if not isinstance(values, torch.Tensor) or values.shape != (stacked.size,):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        stacking = "" if copies == 1 else f" (here {copies} stacked copies of them: shape ({stacked.size},))"
        raise MetricError(f"{task.name}.metric returned {shape!r} for {batch.size} prompts; expected one value per "
                          f"prompt, a tensor of shape ({batch.size},){stacking}: do not average over the batch")
    means = values.float().reshape(copies, batch.size).mean(1)
    if not torch.isfinite(means).all():
        raise MetricError(f"{task.name}.metric returned a non-finite value ({means.tolist()}) on this batch")
    return means


@dataclass(frozen=True)
class Baseline:
    """Metric means on the clean and corrupted prompts; their gap is the denominator of every normalised score.
    Made only where the gap is not zero (`UndefinedScoreError` otherwise)."""

    clean: float
    corrupted: float

    def __post_init__(self) -> None:
        if abs(self.clean - self.corrupted) <= 1e-6 * max(1.0, abs(self.clean), abs(self.corrupted)):
            raise UndefinedScoreError(
                f"the metric is {self.clean:.6g} on clean and {self.corrupted:.6g} on corrupted prompts; "
                "with no gap the normalised score (m_patched - m_corrupted) / (m_clean - m_corrupted) is undefined")

    def base(self, direction: Direction) -> float:
        """The metric of the run an intervention starts from: corrupted (denoising) or clean (noising)."""
        return self.corrupted if direction == "denoising" else self.clean

    def normalise(self, change: Any, direction: Direction) -> Any:
        """The normalised score of a metric change ``m_intervened - m_base`` (a number or a tensor):
        denoising ``change / (m_clean - m_corrupted)``, i.e. (m_patched - m_corrupted) / gap; noising
        ``-change / (m_clean - m_corrupted)``, i.e. (m_clean - m_patched) / gap. Both are 1 when the
        intervention carries the whole behaviour and 0 when it carries none."""
        sign = 1.0 if direction == "denoising" else -1.0
        return sign * change / (self.clean - self.corrupted)

    def score(self, patched: Any, direction: Direction) -> Any:
        """The normalised score of a patched metric value: `normalise` of its change from the base run."""
        return self.normalise(patched - self.base(direction), direction)


@dataclass(frozen=True)
class Measurement(Generic[V]):
    """What ``engine.measure(model, task, batch)`` returns: the metric means on the batch's clean and corrupted
    prompts and the engine's own values, unnormalised (the engine's docstring says what they are). Measuring
    needs no gap between clean and corrupted; normalising does (`baseline`)."""

    clean: float
    corrupted: float
    values: V
    batch: PromptBatch  # what was measured (validated, on the model's device, trimmed)

    def baseline(self) -> Baseline:
        """The normalisation (`UndefinedScoreError` when the clean and corrupted metrics are equal)."""
        return Baseline(clean=self.clean, corrupted=self.corrupted)


def read_out_and_cache(model: Any, inputs: Tensor, names: list[str],
                       position: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Read-out logits and the activations at `names` (detached). (Not TransformerLens's
    `run_with_cache`, which silently ignores hooks passed to it and returns full-sequence logits.)"""
    cache: dict[str, Tensor] = {}
    # hook.name is the canonical name, which can differ from an alias we asked for: key by request.
    fwd = [(name, (lambda tensor, hook, name=name: cache.__setitem__(name, tensor.detach()))) for name in names]
    with hooks.attached(model, fwd):
        out = forward.logits(model, inputs, position)
    return out, cache


PROGRESS_PARAMETERS = 20_000_000  # models with fewer parameters (the toy models) run without a progress bar
_PARAMETER_COUNTS: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def parameter_count(model: Any) -> int:
    """The number of parameters of `model`, counted once per model (walking a bridge's parameters takes ~1 ms,
    a fifth of a small patching run)."""
    try:
        return _PARAMETER_COUNTS[model]
    except (KeyError, TypeError):
        count = sum(p.numel() for p in model.parameters())
        try:
            _PARAMETER_COUNTS[model] = count
        except TypeError:  # not weakly referenceable: count every time
            pass
        return count


def progress(model: Any, total: int, description: str, enabled: bool = True) -> Any:
    """A progress bar (tqdm, on stderr) over `total` steps of an engine's run: shown on models of at least
    `PROGRESS_PARAMETERS` parameters, once the run has taken a second, unless `enabled` is False (the engines'
    ``progress`` option). Use it as a context manager and call ``update(steps)``."""
    from tqdm.auto import tqdm

    large = enabled and parameter_count(model) >= PROGRESS_PARAMETERS
    return tqdm(total=total, desc=description, disable=not large, leave=False, delay=1.0)


def chunks(total: int, size: int) -> list[range]:
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def copies_per_pass(model: Any, batch: PromptBatch, memory_mb: float) -> int:
    """How many stacked copies of the batch fit the memory budget (a rough per-copy activation size)."""
    cfg = model.cfg
    n_pos = batch.clean.shape[1]
    d_mlp = 0 if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
    floats = batch.size * n_pos * (6 * cfg.d_model + 3 * cfg.n_heads * n_pos + 2 * d_mlp)
    return max(1, int(memory_mb * 2**20 // (4 * floats)))


def every_layer(model: Any, *kinds: str) -> list[Site]:
    """The sites of `kinds` in every block, layer by layer."""
    return [(layer, kind) for layer in range(model.cfg.n_layers) for kind in kinds]


def on_model(model: Any, batch: PromptBatch) -> PromptBatch:
    """`batch` validated against `model` (typed errors naming the bad value), on its input device, and trimmed
    of the positions no read-out can see (causal models): the one place prompts are made ready."""
    batch.validate(model)
    return batch.to(forward.input_device(model)).trimmed(causal=model.cfg.attention_dir == "causal")


@dataclass
class Runs:
    """The base and source runs of a batch, from one forward pass over both stacked, with the activations at
    `sites`. Denoising: base = corrupted, source = clean; noising: the reverse. A site's activations lie where
    the model computed them (on a model spread over devices, on that block's device). `batch` is the batch
    made ready (`on_model`)."""

    model: Any
    task: Any
    batch: PromptBatch
    direction: Direction
    base: dict[Site, Tensor]
    source: dict[Site, Tensor]
    base_logits: Tensor  # read-out logits of the base run [batch, vocab]
    source_logits: Tensor
    clean_metric: float
    corrupted_metric: float

    @classmethod
    def prepare(cls, model: Any, task: Any, batch: PromptBatch, direction: Direction,
                sites: Iterable[Site] = ()) -> "Runs":
        check_direction(direction)
        batch = on_model(model, batch)
        sites = list(dict.fromkeys(sites))
        base_in, source_in = (batch.corrupted, batch.clean) if direction == "denoising" else (batch.clean, batch.corrupted)
        names = [hooks.site(model, layer, kind) for layer, kind in sites]
        # One forward pass over base and source stacked: half the per-call overhead of two passes.
        with torch.no_grad():
            logits, cache = read_out_and_cache(model, torch.cat([base_in, source_in]), names, batch.position.repeat(2))
            base_metric, source_metric = metric_means(task, logits, batch, 2).tolist()
        clean, corrupted = (source_metric, base_metric) if direction == "denoising" else (base_metric, source_metric)
        if _GAP_REQUIRED.get():
            Baseline(clean=clean, corrupted=corrupted)  # UndefinedScoreError before any long work
        n = batch.size
        return Runs(model, task, batch, direction, base={site: cache[name][:n] for site, name in zip(sites, names)},
                    source={site: cache[name][n:] for site, name in zip(sites, names)},
                    base_logits=logits[:n], source_logits=logits[n:], clean_metric=clean, corrupted_metric=corrupted)

    def change(self, site: Site) -> Tensor:
        """source - base at `site`."""
        return self.source[site] - self.base[site]

    def baseline(self) -> Baseline:
        return Baseline(clean=self.clean_metric, corrupted=self.corrupted_metric)

    def rows(self, rows: range) -> "Runs":
        """The same runs restricted to prompts `rows` (views, not copies)."""
        pick = lambda t: t[rows.start:rows.stop]  # noqa: E731
        return Runs(self.model, self.task, self.batch.rows(rows), self.direction,
                    {k: pick(v) for k, v in self.base.items()}, {k: pick(v) for k, v in self.source.items()},
                    pick(self.base_logits), pick(self.source_logits), self.clean_metric, self.corrupted_metric)

    def measured(self, values: V) -> Measurement[V]:
        return Measurement(self.clean_metric, self.corrupted_metric, values, self.batch)


@dataclass
class PatchRuns(Runs):
    """Base and source runs for patching head outputs, and how to finish a patched run from the patched layer:
    the base run's residual entering each block and its attention output, and each layer's z change."""

    base_resid: list[Tensor] = field(default_factory=list)
    base_attn_out: list[Tensor] = field(default_factory=list)
    z_change: list[Tensor] = field(default_factory=list)

    @classmethod
    def prepare(cls, model: Any, task: Any, batch: PromptBatch, direction: Direction,
                sites: Iterable[Site] = ()) -> "PatchRuns":
        check_sequential(model)
        runs = Runs.prepare(model, task, batch, direction, [*every_layer(model, "resid_pre", "attn_out", "z"), *sites])
        layers = range(model.cfg.n_layers)
        # On a model spread over devices, a block's input may be captured before the block moves it to its own
        # device: keep each layer's activations together, where its attention computed.
        return cls(**vars(runs),
                   base_resid=[runs.base[layer, "resid_pre"].to(runs.base[layer, "attn_out"].device) for layer in layers],
                   base_attn_out=[runs.base[layer, "attn_out"] for layer in layers],
                   z_change=[runs.change((layer, "z")) for layer in layers])

    def head_deltas(self, layer: int) -> Float[Tensor, "head batch pos d_model"]:
        """Each head's change to the residual stream: (z_source - z_base) through its W_O."""
        w_o = output_weights(self.model, layer).to(self.z_change[layer].device)
        return einops.einsum(self.z_change[layer], w_o, "batch pos head d_head, head d_head d_model -> head batch pos d_model")

    def finish(self, layer: int, deltas: Float[Tensor, "copies batch pos d_model"]) -> Tensor:
        """Metric means of the base run with each copy's delta added after block `layer`'s attention."""
        copies = deltas.shape[0]
        mid = self.base_resid[layer] + self.base_attn_out[layer]
        residual = einops.rearrange(mid[None] + deltas.to(mid.device), "copies batch pos d -> (copies batch) pos d")
        residual = finish_block(self.model, layer, residual)
        position = self.batch.position.repeat(copies)
        logits = forward.run_from(self.model, residual, layer + 1, position)
        return metric_means(self.task, logits, self.batch, copies)


def check_sequential(model: Any) -> None:
    if getattr(model.cfg, "parallel_attn_mlp", False):
        raise IncompatibleModelError("patching restarts at the patched layer, which assumes sequential "
                                     "attention then MLP; this model runs them in parallel")


def output_weights(model: Any, layer: int) -> Float[Tensor, "head d_head d_model"]:
    """W_O of one layer, also when offloaded. (``model.W_O`` stacks every layer on each access: 0.17 s on SmolLM2.)"""
    attn = model.blocks[layer].attn
    with forward.readable_weights(attn):
        return attn.W_O


def finish_block(model: Any, layer: int, resid_mid: Tensor) -> Tensor:
    """The rest of block `layer` after its attention: its MLP, if the model has one."""
    if model.cfg.attn_only:
        return resid_mid
    block = model.blocks[layer]
    return resid_mid + block.mlp(block.ln2(resid_mid))


class _Captured(Exception):
    """Raised by the last capture hook: the rest of the block is not needed."""


def block_activations(model: Any, residual: Tensor, layer: int, capture: list[str],
                      replace: Optional[dict[str, Tensor]] = None) -> dict[str, Tensor]:
    """Run block `layer` on `residual`, replacing the activations in `replace` and returning those in
    `capture`; the run stops as soon as everything is captured (no attention for q/k/v, no MLP)."""
    cache: dict[str, Tensor] = {}

    def replacing(name: str):
        return lambda tensor, hook: replace[name].to(tensor.device, tensor.dtype)

    def storing(name: str):
        def hook(tensor: Tensor, hook: Any) -> None:
            cache[name] = tensor.detach()
            if len(cache) == len(capture):
                raise _Captured

        return hook

    fwd = [(name, replacing(name)) for name in (replace or {})] + [(name, storing(name)) for name in capture]
    try:
        with hooks.attached(model, fwd):
            forward.run_blocks(model, residual, layer, layer + 1)
    except _Captured:
        pass
    if len(cache) != len(capture):
        raise HookNotFiredError(f"block {layer} never reached {sorted(set(capture) - set(cache))}")
    return cache
