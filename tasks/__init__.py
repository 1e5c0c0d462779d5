"""Task registry: ``get(name)`` returns a task; ``names()`` lists them."""

from __future__ import annotations

from typing import Any

from circuits import Registry
from tasks.capitals import Capitals
from tasks.factual_recall import FactualRecall
from tasks.icl_regression import ICLRegression
from tasks.induction import Induction
from tasks.regular_languages import RegularLanguages

_TASKS: Registry[Any] = Registry("task")
_TASKS.register("induction", Induction)
_TASKS.register("icl_regression", ICLRegression)
_TASKS.register("factual_recall", FactualRecall)
_TASKS.register("capitals", Capitals)
_TASKS.register("regular_languages", RegularLanguages)


# The registry's own methods are the public functions (``register`` refuses a name already taken).
get = _TASKS.get
names = _TASKS.names
register = _TASKS.register

__all__ = ["Capitals", "FactualRecall", "ICLRegression", "Induction", "RegularLanguages", "get", "names", "register"]
