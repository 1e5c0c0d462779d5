"""Tasks for the sweep tests, importable by Ray workers as ``"tests.sweep_tasks:..."``.

They wrap a registered task and leave traces in files, because a Ray worker is another process: `Logged`
appends a line per batch it builds (to count runs), `DiesOnce` kills its process the first time it is asked for
a batch (``os._exit``: no exception, no clean-up, as an out-of-memory kill would)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tasks


@dataclass(frozen=True)
class Logged:
    inner: str
    log: str

    @property
    def name(self) -> str:
        return self.inner

    def batch(self, model: Any, n: int, seed: int) -> Any:
        with open(self.log, "a") as handle:
            handle.write(f"{self.inner} seed{seed} pid{os.getpid()}\n")
        return tasks.get(self.inner).batch(model, n, seed)

    def metric(self, logits: Any, batch: Any) -> Any:
        return tasks.get(self.inner).metric(logits, batch)

    def default_model(self) -> Any:
        return tasks.get(self.inner).default_model()


@dataclass(frozen=True)
class DiesOnce(Logged):
    marker: str = ""

    def batch(self, model: Any, n: int, seed: int) -> Any:
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(3)
        return super().batch(model, n, seed)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
