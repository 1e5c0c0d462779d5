"""The `meta` record every engine attaches to its HeadGraph."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any


def package_version() -> str:
    try:
        return version("circuits")
    except PackageNotFoundError:
        return "unknown"


def graph_meta(engine: Any, task: Any, model: Any, *, n: int, seed: int, options: dict[str, Any],
               **results: Any) -> dict[str, Any]:
    return {"engine": engine.name, "options": options, "task": task.name,
            "model": getattr(model.cfg, "model_name", None) or type(model).__name__,
            "n": n, "seed": seed, "version": package_version(), **results}
