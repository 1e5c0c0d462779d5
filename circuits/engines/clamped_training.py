"""Clamped training ("artificial optogenetics", Singh et al. 2024): ablate each head throughout training.

Instead of intervening on a trained model, train copies of the model from its current (initial) weights, one
per head with that head ablated from the first step to the last (`circuits.clamps.Ablate`), plus one without,
all on the task's training objective with the same seed and the same batches in the same order; then compare
the held-out losses. A head whose absence leaves the final loss high is one the solution cannot do without;
a head whose absence moves the phase change (the step where the held-out loss first falls below half its
plateau) is one the circuit's formation leans on. For the `interaction_heads` heads with the largest |score|, runs with both ablated give
interaction edges (effect of both minus the sum of each).

`model` is a toy bridge or plain native module (its weights are the starting point; it is never trained
itself), or a `models.ToyConfig` (a fresh seeded initialisation). Extra `clamps` (e.g. a previous-token
pattern) apply in every run. Runs are independent: ``workers > 1`` trains them in parallel processes.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from multiprocessing import get_context
from typing import Any, ClassVar, Optional

import torch
from tqdm.auto import tqdm

from circuits import clamps as clamp_lib
from circuits import forward, models
from circuits.clamped_runs import Objective, Run, Settings, plateau_loss, train_clamped
from circuits.engines import base
from circuits.engines.kit import Measurement
from circuits.errors import IncompatibleModelError, InvalidOptionError, UndefinedScoreError
from circuits.graph import HeadGraph
from circuits.nodes import Head, all_heads

PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class TrainingRuns:
    """What clamped training measures: the run without ablation, one run per ablated head, one per pair of
    heads (keys ``"L0H1+L1H2"``), and the plateau loss whose half marks the phase change."""

    baseline: Run
    ablated: dict[str, Run]
    pairs: dict[str, Run]
    plateau: float


@base.options(renamed={"top_k": "interaction_heads"})
@dataclass(frozen=True)
class ClampedTraining(base.EngineBase):
    steps: int = 1500
    lr: Optional[float] = None  # None: the task's ``lr`` if it has one, else 1e-3
    eval_every: int = 25
    batch_size: Optional[int] = None  # None: the task's own training batch
    heads: Optional[tuple[str, ...]] = None  # heads to ablate, one run each; None: every head
    mode: str = "zero"  # Ablate mode: "zero" or "mean"
    interaction_heads: int = 3  # pairwise runs among this many heads, the top by |score| (interaction edges)
    clamps: tuple = ()  # clamps applied in every run, baseline included
    plateau: Optional[float] = None  # None: the task's plateau_loss, else the baseline's loss at 10% of steps
    workers: int = 1
    progress: bool = True

    name: ClassVar[str] = "clamped_training"
    trains: ClassVar[bool] = True  # scores come from training copies, not from the model as it is

    def __post_init__(self) -> None:
        Settings(steps=self.steps, eval_every=self.eval_every)  # validates both
        if self.lr is not None and not self.lr > 0:
            raise InvalidOptionError(f"lr must be > 0; got {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidOptionError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.mode not in ("zero", "mean"):
            raise InvalidOptionError(f"mode={self.mode!r}; expected 'zero' or 'mean'")
        if self.interaction_heads < 0 or self.workers < 1:
            raise InvalidOptionError(f"interaction_heads must be >= 0 and workers >= 1; got {self.interaction_heads}, "
                                     f"{self.workers}")
        if self.plateau is not None and not self.plateau > 0:
            raise InvalidOptionError(f"plateau must be a positive loss; got {self.plateau}")
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(str(Head.parse(h)) for h in self.heads))
        object.__setattr__(self, "clamps", tuple(self.clamps))

    @property
    def score_meaning(self) -> str:
        return ("node score (metric: the held-out loss): (final held-out loss with the head ablated throughout training - final loss without) / "
                "|initial loss - final loss without|; 1 = training without the head ends as bad as untrained. "
                "Node attributes: final_loss, crossing_step (first step with held-out loss < half the plateau; None: "
                "never) and crossing_delay (vs. no ablation). Edge score (effect 'interaction'): interaction of two ablated heads, "
                "(effect of both - effect of each summed), normalised the same way.")

    def run(self, model: Any, task: Any, n: int = 32, seed: int = 0) -> HeadGraph:
        """As every engine's, with `seed` also the training seed (batches, held-out set)."""
        start = _starting_point(model)
        with base.session(start[1]):
            batch = base.task_batch(start[1], task, n, seed)
        return self.recorded(start[1], task, seed, self._measure(start, task, batch, seed))

    def measure(self, model: Any, task: Any, batch: Any) -> Measurement[TrainingRuns]:
        """The training runs (`TrainingRuns`) with training seed 0 (``run(..., seed=s)`` trains with seed s);
        `batch` checks that the plain copy computes what `model` does. Measurement.clean is the final held-out
        loss without ablation, Measurement.corrupted that plus |initial loss - final loss| (the initial loss when
        training lowered it): their gap normalises the scores."""
        return self._measure(_starting_point(model), task, batch, seed=0)

    def _measure(self, start: tuple[Any, Any], task: Any, batch: Any, seed: int) -> Measurement[TrainingRuns]:
        initial, reference = start
        with base.session(reference, grad=True):
            batch = base.on_model(reference, batch)
            objective = Objective.of(task, reference, self.batch_size)
            held_out = objective.held_out(max(batch.size, 2), seed)
            clamp_lib.check_all(self.clamps, initial.cfg, held_out[0])
            heads = self._heads(initial.cfg)
            clamp_lib.check_all([clamp_lib.Ablate(h, self.mode) for h in heads], initial.cfg, held_out[0])
            if reference is not initial:
                _check_parity(reference, initial, batch)
            settings = Settings.for_task(task, self.steps, self.eval_every, seed, self.lr)
            jobs = {"": ()} | {h: (clamp_lib.Ablate(h, self.mode),) for h in heads}
            ablated = self._train(initial, objective, settings, held_out, jobs)
            baseline = ablated.pop("")
            plateau = self.plateau if self.plateau is not None else plateau_loss(task, baseline, settings.steps)
            top = sorted(ablated, key=lambda h: -abs(ablated[h].final_loss - baseline.final_loss))[: self.interaction_heads]
            pairs = {f"{a}+{b}": (clamp_lib.Ablate(a, self.mode), clamp_lib.Ablate(b, self.mode))
                     for a, b in combinations(sorted(top, key=Head.parse), 2)}
            runs = TrainingRuns(baseline, ablated, self._train(initial, objective, settings, held_out, pairs), plateau)
            # the normalisation: the loss training removed (its size, should training have raised the loss)
            scale = abs(baseline.loss[0] - baseline.final_loss)
            return Measurement(baseline.final_loss, baseline.final_loss + scale, runs, batch)

    def graph(self, model: Any, measurement: Measurement[TrainingRuns]) -> HeadGraph:
        """Node: the final-loss change with the head ablated; edge: the interaction of two ablated heads; both
        normalised by the loss training removed (noising: ablation takes behaviour away)."""
        runs = measurement.values
        baseline, threshold = runs.baseline, 0.5 * runs.plateau
        if not measurement.corrupted > measurement.clean:
            raise UndefinedScoreError(f"training left the held-out loss at {baseline.final_loss:.6g}: no loss "
                                      "change to normalise the scores by")
        normalised = measurement.baseline().normalise
        cfg = model.cfg if hasattr(model, "cfg") else model
        graph = HeadGraph(n_layers=cfg.n_layers, n_heads=cfg.n_heads)
        graph.meta.update(initial_loss=baseline.loss[0], final_loss=baseline.final_loss, plateau=runs.plateau,
                          threshold=threshold, crossing_step=baseline.crossing(threshold), steps=baseline.steps,
                          curve=baseline.loss)
        for head in all_heads(cfg):
            run = runs.ablated.get(head.name)
            if run is None:
                graph.add_node(head)  # not ablated: unmeasured, no score
                continue
            graph.add_node(head, normalised(run.final_loss - baseline.final_loss, "noising"),
                           **_summary(run, baseline, threshold))
        for key, run in runs.pairs.items():
            a, b = key.split("+")
            both = run.final_loss - baseline.final_loss
            each = runs.ablated[a].final_loss + runs.ablated[b].final_loss - 2 * baseline.final_loss
            graph.add_edge(a, b, normalised(both - each, "noising"), effect="interaction",
                           **_summary(run, baseline, threshold))
        return graph

    def _heads(self, cfg: Any) -> list[str]:
        if self.heads is None:
            return [str(h) for h in all_heads(cfg)]
        return [Head.in_model(cfg, h, what="head for clamped_training heads").name for h in self.heads]

    def _train(self, initial: Any, objective: Objective, settings: Settings, held_out: Any,
               jobs: dict[str, tuple]) -> dict[str, Run]:
        """One run per job (extra clamps first), in order, or in `workers` processes; a progress bar over runs."""
        arguments = [(initial, objective, (*self.clamps, *extra), settings, held_out) for extra in jobs.values()]
        bar = tqdm(total=len(arguments), desc="clamped runs", disable=not self.progress, leave=False)
        results: list[Run] = []
        try:
            if self.workers == 1 or len(arguments) == 1:
                for args in arguments:
                    results.append(train_clamped(*args))
                    bar.update()
            else:
                with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn")) as pool:
                    for run in pool.map(_train_job, arguments):
                        results.append(run)
                        bar.update()
        finally:
            bar.close()
        return dict(zip(jobs, results))


def _train_job(args: tuple) -> Run:
    return train_clamped(*args)


def _summary(run: Run, baseline: Run, threshold: float) -> dict[str, Any]:
    crossing, reference = run.crossing(threshold), baseline.crossing(threshold)
    delay = None if crossing is None or reference is None else crossing - reference
    return {"final_loss": run.final_loss, "crossing_step": crossing, "crossing_delay": delay, "curve": run.loss}


def _starting_point(model: Any) -> tuple[Any, Any]:
    """(plain native module to copy for every run, the model prompts are validated against)."""
    if isinstance(model, models.ToyConfig):
        module = models.new_native(model)
        return module, module
    initial = models.native_copy(model)  # IncompatibleModelError for models that are not toys
    return initial, model


def _check_parity(reference: Any, initial: Any, batch: Any) -> None:
    """The plain copy computes what the given model computes (clean and corrupted prompts, read-out logits)."""
    with torch.no_grad():
        for inputs in (batch.clean, batch.corrupted):
            expected = forward.logits(reference, inputs, batch.position)
            rows = torch.arange(inputs.shape[0], device=inputs.device)
            got = _plain_logits(initial, inputs)[rows, batch.position.to(inputs.device)]
            gap = (expected - got.to(expected.device)).abs().max().item()
            if gap > PARITY_TOLERANCE:
                raise IncompatibleModelError(f"the plain copy of the model differs from it by {gap:.3g} in the logits "
                                             f"(expected <= {PARITY_TOLERANCE}); is it a modified toy model?")


def _plain_logits(module: Any, inputs: torch.Tensor) -> torch.Tensor:
    device = next(p.device for p in module.parameters() if p.device.type != "meta")
    inputs = inputs.to(device)
    return module(inputs_embeds=inputs) if inputs.is_floating_point() else module(inputs)

