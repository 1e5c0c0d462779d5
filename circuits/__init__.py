"""circuits: find the attention-head circuits behind a language model's behaviour.

    import circuits, tasks
    task = tasks.get("induction")
    model = task.default_model()
    graph = circuits.discover(model, task, engine="activation_patching", n=32, seed=0)
"""

from circuits import engines, errors, models
from circuits.discovery import discover
from circuits.graph import HeadGraph
from circuits.task import PromptBatch, Task

__all__ = ["HeadGraph", "PromptBatch", "Task", "discover", "engines", "errors", "models"]
