"""circuits: find the attention-head circuits behind a language model's behaviour.

    import circuits, tasks
    task = tasks.get("induction")
    model = task.default_model()
    graph = circuits.discover(model, task, engine="activation_patching", n=32, seed=0)

The public API is what this module exports; modules whose names start with an underscore are internal. The
functions `compare` and `sweep` live in the modules `circuits.comparison` and `circuits.sweeps` (with `Comparison`,
`Spec`, ...), so that a module never hides behind a function of the same name.
"""

from circuits import clamped_runs, clamps, engines, errors, forward, hooks, metrics, models, nodes, training
from circuits._discovery import discover
from circuits._registry import Registry
from circuits._task import PromptBatch, Task, TrainableTask, TrainingDefaults, TrainingSettings
from circuits.comparison import compare
from circuits._version import package_version
from circuits.engines.base import Engine
from circuits.graph import EMBED, LOGITS, Head, HeadGraph
from circuits.sweeps import sweep

__version__ = package_version()  # of the installed distribution, tl-circuits

__all__ = ["EMBED", "LOGITS", "Engine", "Head", "HeadGraph", "PromptBatch", "Registry", "Task", "TrainableTask",
           "TrainingDefaults", "TrainingSettings", "clamped_runs", "clamps", "compare", "discover", "engines", "errors",
           "forward", "hooks", "metrics", "models", "nodes", "sweep", "training"]
