"""The trained toy models that ship as package data (``tasks/data/models``), and their headline numbers.

Each default's weights are ``{name}.safetensors`` with ``{name}.json`` (the recipe hash they were trained by, the
config, the training spec, the headline numbers below and, for regular languages, the training history).
`models.TrainedToy.load` uses them while the current code computes the same recipe hash; ``make models``
(`analyses.models`) trains every one again and writes them; `tests/test_shipped_models.py` fails when a recipe
changed and its weights were not regenerated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).parent / "data" / "models"


@dataclass(frozen=True)
class Default:
    """A shipped model: its recipe (``training(progress)``) and its headline numbers (``headline(model)``)."""

    name: str  # the config's name: the shipped files' stem
    training: Callable[[bool], Any]  # progress -> circuits.models.TrainedToy
    headline: Callable[[Any], dict[str, float]]
    about: str


def defaults() -> list[Default]:
    """Every shipped default: induction, the 1-, 2- and 4-head ICL regression models (`analyses.icl_regression`
    compares them), few-shot and regular languages."""
    from tasks.few_shot import FewShot
    from tasks.icl_regression import ICLRegression, prepare
    from tasks.induction import Induction
    from tasks.regular_languages import RegularLanguages

    induction, icl, few_shot, languages = Induction(), ICLRegression(), FewShot(), RegularLanguages()
    out = [Default("induction", induction.training,
                   lambda m: {"copying_accuracy": induction.copying_accuracy(m)},
                   "2 layers x 4 heads, attention only: copies the token after a repeated segment's current one")]
    for heads in (1, 2, 4):
        out.append(Default(f"icl_regression_h{heads}",
                           lambda progress, heads=heads: icl.training(heads, progress=progress),
                           lambda m: {"validation_mse": icl.validation_mse(prepare(m))},
                           f"1 layer x {heads} softmax head(s): in-context linear regression"
                           + (" (the task's default)" if heads == icl.heads else "")))
    out.append(Default("few_shot", few_shot.training, lambda m: {"accuracy": few_shot.accuracy(m)},
                       "2 layers x 8 heads, attention only: few-shot classification of held-out class pairs"))
    out.append(Default("regular_languages", languages.training, languages.measure,
                       "2 layers x 4 heads with MLPs: next letter of a sequence from an unseen random DFA"))
    return out


def get(name: str) -> Default:
    from circuits.errors import UnknownNameError

    found = {d.name: d for d in defaults()}
    if name not in found:
        raise UnknownNameError("shipped model", name, list(found))
    return found[name]
