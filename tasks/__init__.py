"""Task registry: ``get(name, **options)`` returns a task; ``names()`` lists them; ``register(name, factory)``;
``prompts(file_or_records, ...)`` makes a task of your own prompt pairs (`tasks.prompt_pairs`).

Tasks are the entry points of the group ``tl_circuits.tasks`` of every installed distribution (this one's in
pyproject.toml; another package declares its own the same way, docs/plugins.md). The registry is the library's
(`circuits._registry.TASKS`), so `circuits.sweep` resolves task names without importing this package. A task's
module is imported when its name is asked for, and the classes below on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from circuits import _lazy
from circuits._registry import TASKS

if TYPE_CHECKING:  # the same names, for type checkers and the API reference
    from tasks.capitals import Capitals
    from tasks.factual_recall import FactualRecall
    from tasks.induction_spans import Induction
    from tasks.prompt_pairs import PromptPairs, prompts
    from tasks.spans import FewShot, ICLRegression, RegularLanguages

# The registry's own methods are the public functions (``register`` refuses a name already taken).
get = TASKS.get
names = TASKS.names
register = TASKS.register


def ready_made() -> list[str]:
    """The registered tasks that need no options (all but those built from your data, such as ``prompts``, which
    needs a file): what "every task" means in comparisons and benchmarks. Imports each task's module."""
    import inspect

    def needs_nothing(factory: Any) -> bool:
        try:
            parameters = inspect.signature(factory).parameters.values()
        except (TypeError, ValueError):  # no signature to read: assume it can be called bare
            return True
        return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)

    return [name for name in names() if needs_nothing(TASKS.factory(name))]

__all__ = ["Capitals", "FactualRecall", "FewShot", "ICLRegression", "Induction", "PromptPairs", "RegularLanguages",
           "get", "names", "prompts", "ready_made", "register"]

__getattr__, __dir__ = _lazy.exports(__name__, {
    "Capitals": "tasks.capitals", "FactualRecall": "tasks.factual_recall", "FewShot": "tasks.spans",
    "ICLRegression": "tasks.spans", "Induction": "tasks.induction_spans",
    "RegularLanguages": "tasks.spans", "PromptPairs": "tasks.prompt_pairs", "prompts": "tasks.prompt_pairs",
})
