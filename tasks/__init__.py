"""Task registry: ``get(name, **options)`` returns a task; ``names()`` lists them; ``register(name, factory)``.

Tasks are the entry points of the group ``tl_circuits.tasks`` of every installed distribution (this one's in
pyproject.toml; another package declares its own the same way, docs/plugins.md). The registry is the library's
(`circuits._registry.TASKS`), so `circuits.sweep` resolves task names without importing this package. A task's
module is imported when its name is asked for, and the classes below on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from circuits import _lazy
from circuits._registry import TASKS

if TYPE_CHECKING:  # the same names, for type checkers and the API reference
    from tasks.capitals import Capitals
    from tasks.factual_recall import FactualRecall
    from tasks.few_shot import FewShot
    from tasks.icl_regression import ICLRegression
    from tasks.induction import Induction
    from tasks.regular_languages import RegularLanguages

# The registry's own methods are the public functions (``register`` refuses a name already taken).
get = TASKS.get
names = TASKS.names
register = TASKS.register

__all__ = ["Capitals", "FactualRecall", "FewShot", "ICLRegression", "Induction", "RegularLanguages", "get", "names",
           "register"]

__getattr__, __dir__ = _lazy.exports(__name__, {
    "Capitals": "tasks.capitals", "FactualRecall": "tasks.factual_recall", "FewShot": "tasks.few_shot",
    "ICLRegression": "tasks.icl_regression", "Induction": "tasks.induction",
    "RegularLanguages": "tasks.regular_languages",
})
