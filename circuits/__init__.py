"""circuits: find the attention-head circuits behind a language model's behaviour.

    import circuits, tasks
    task = tasks.get("induction")
    model = task.default_model()
    graph = circuits.discover(model, task, engine="activation_patching", n=32, seed=0)

The public API is what this module exports; modules whose names start with an underscore are internal. The
functions `compare` and `sweep` live in the modules `circuits.comparison` and `circuits.sweeps` (with `Comparison`,
`Spec`, ...), so that a module never hides behind a function of the same name.

Names are imported on first use (PEP 562, `circuits._lazy`): ``import circuits`` loads neither torch nor
TransformerLens; ``circuits.discover`` loads what a run needs.
"""

from typing import TYPE_CHECKING

from circuits import _lazy
from circuits._version import package_version

if TYPE_CHECKING:  # the same names, for type checkers and the API reference
    from circuits import (clamped_runs, clamps, engines, errors, forward, hooks, metrics, models, nodes, tokens,
                          training, view)
    from circuits._discovery import discover
    from circuits._registry import Registry
    from circuits._task import PromptBatch, Task, TrainableTask, TrainingDefaults, TrainingSettings
    from circuits.comparison import compare
    from circuits.engines.base import Engine
    from circuits.evaluation import Evaluation, evaluate
    from circuits.graph import EMBED, LOGITS, Edge, Head, HeadGraph
    from circuits.sweeps import sweep

__version__ = package_version()  # of the installed distribution, tl-circuits

__all__ = ["EMBED", "LOGITS", "Edge", "Engine", "Evaluation", "Head", "HeadGraph", "PromptBatch", "Registry", "Task",
           "TrainableTask", "TrainingDefaults", "TrainingSettings", "clamped_runs", "clamps", "compare", "discover",
           "engines", "errors", "evaluate", "forward", "hooks", "metrics", "models", "nodes", "sweep", "tokens",
           "training", "view"]

_SUBMODULES = ("clamped_runs", "clamps", "engines", "errors", "forward", "hooks", "metrics", "models", "nodes",
               "tokens", "training", "view")
__getattr__, __dir__ = _lazy.exports(__name__, {
    **{name: f"circuits.{name}" for name in _SUBMODULES},
    "discover": "circuits._discovery", "Registry": "circuits._registry", "Engine": "circuits.engines.base",
    **{name: "circuits._task" for name in ("PromptBatch", "Task", "TrainableTask", "TrainingDefaults",
                                           "TrainingSettings")},
    "compare": "circuits.comparison", "sweep": "circuits.sweeps", "evaluate": "circuits.evaluation",
    "Evaluation": "circuits.evaluation",
    **{name: "circuits.graph" for name in ("EMBED", "LOGITS", "Edge", "Head", "HeadGraph")},
})
