"""Sweeps: many engine runs (tasks x models x engines x seeds), one folder per cell, resumable.

    report = circuits.sweep("sweeps/example.toml", "out/sweep", backend="ray")

A spec (TOML file or dict; `Spec`) lists tasks, models, engines with options, seeds and ``n``; the cells are
their product. Each cell's folder is named by a hash of its canonical config and the package version and
holds ``graph.json`` and ``meta.json`` (done) or ``error.json`` (failed). The driver writes them atomically
from what the workers return, so workers need no shared filesystem; ``results.csv`` is rebuilt from the
folders. A rerun skips failed cells, runs pending ones, and checks done ones: a done cell records hashes of the
prompts it ran on (the task's batch for its ``n`` and seed) and of the model's weights (`fingerprint`), and one
whose prompts or weights changed since is run again (``report.stale``) instead of serving its old graph;
``verify=False`` trusts done cells without loading their models. ``retry_failed=True`` reruns only failed ones.

Errors: a typed error (`circuits.errors`) in a cell is deterministic, so it is recorded and never retried;
any other exception is recorded too (``--retry-failed`` reruns it). A worker process that dies (killed,
``os._exit``, out of memory) is restarted by Ray and its cells retried up to `retries` times.

Backends: ``local`` runs cells in this process (no extra dependency); ``ray`` (`circuits.sweeps.ray_backend`, the
``[ray]`` extra) runs one actor per model, which keeps the model loaded across that model's cells.
Task and engine names resolve through the library's registries when a spec is read: the entry points of installed
distributions (docs/plugins.md) or ``"module:attribute"`` for your own code; the library itself knows no concrete
task and never imports the `tasks` package.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from tqdm.auto import tqdm

from circuits import forward
from circuits.sweeps import fingerprint
from circuits.sweeps.spec import Cell, EngineSpec, ModelSpec, Spec, TaskSpec, canonical
from circuits._version import package_version
from circuits.errors import CircuitsError, InvalidOptionError, UnknownNameError
from circuits.graph import HeadGraph

__all__ = ["Cell", "CellRunner", "EngineSpec", "ModelSpec", "Spec", "SweepReport", "TaskSpec", "dry_run_table",
           "status", "sweep", "write_results_csv"]

BACKENDS = ("local", "ray")

# --- the worker side: load a model once, run cells on it ----------------------------------------------------
class CellRunner:
    """Runs the cells of one group (one model), loading the model on the first cell and keeping it."""

    def __init__(self) -> None:
        self._model: Any = None
        self._load_error: Optional[dict[str, Any]] = None
        self._weights: Optional[str] = None  # the loaded model's weights fingerprint, computed once
        self.load_seconds = 0.0

    def run(self, cell: Cell, recorded: Optional[dict[str, str]] = None) -> dict[str, Any]:
        """``{"graph": HeadGraph, "meta": {...}}`` or ``{"error": {...}, "meta": {...}}``; exceptions become
        error records (a typed one is marked deterministic), so the driver decides what to write. `recorded`: the
        fingerprints of a done cell; when its prompts and weights are still those, ``{"unchanged": True}`` and
        nothing runs."""
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        self.load_seconds = 0.0
        fingerprints: dict[str, str] = {}
        try:
            task = cell.task.build()
            model = self._loaded(cell, task)
            fingerprints = self.fingerprints(model, task, cell)
            if recorded == fingerprints:
                return {"unchanged": True, "fingerprints": fingerprints}
            graph = cell.engine.build().run(model, task, n=cell.n, seed=cell.seed)
        except Exception as error:  # noqa: BLE001 - recorded in error.json, re-raised nowhere
            return {"error": _error_record(error), "meta": self._meta(cell, start, self._model, fingerprints, recorded)}
        return {"graph": graph, "meta": self._meta(cell, start, self._model, fingerprints, recorded)}

    def fingerprints(self, model: Any, task: Any, cell: Cell) -> dict[str, str]:
        """Hashes of the prompts the cell runs on and of the model's weights (`circuits.sweeps.fingerprint`)."""
        if self._weights is None:
            self._weights = fingerprint.weights(model)
        return {"prompts": fingerprint.task_prompts(model, task, cell.n, cell.seed), "weights": self._weights}

    def _loaded(self, cell: Cell, task: Any) -> Any:
        if self._load_error is not None:  # a model that failed to load fails every cell the same way
            raise RuntimeError(f"loading model {cell.model.name!r} failed: {self._load_error['message']}")
        if self._model is None:
            start = time.perf_counter()
            try:
                self._model = cell.model.load(task)
                self.load_seconds = time.perf_counter() - start
            except Exception as error:
                self._load_error = _error_record(error)
                raise
        return self._model

    def _meta(self, cell: Cell, start: float, model: Any, fingerprints: dict[str, str],
              recorded: Optional[dict[str, str]]) -> dict[str, Any]:
        peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        devices = sorted({str(p.device) for p in model.parameters()}) if model is not None else []
        return {"key": cell.key, "cell": cell.config(), "seconds": time.perf_counter() - start,
                "load_seconds": self.load_seconds,  # loading the model (the group's first cell only)
                "device": str(forward.input_device(model)) if model is not None else None,
                "parameter_devices": devices, "host": socket.gethostname(), "pid": os.getpid(),
                "peak_cuda_mb": peak_cuda, "peak_rss_mb": rss, "versions": _versions(),
                "fingerprints": fingerprints,  # what the cell ran on: prompts and weights (a rerun checks them)
                "stale": _changed(recorded, fingerprints)}


def _changed(recorded: Optional[dict[str, str]], fingerprints: dict[str, str]) -> list[str]:
    """What changed since a done cell ran (``["prompts"]``, ``["weights"]``, ...); [] for a cell never done."""
    if recorded is None:
        return []
    return [name for name in ("prompts", "weights") if recorded.get(name) != fingerprints.get(name)]


def _error_record(error: BaseException) -> dict[str, Any]:
    return {"type": type(error).__name__, "message": str(error), "deterministic": isinstance(error, CircuitsError),
            "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))}


def _versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"circuits": package_version(), "python": platform.python_version()}
    for package in ("torch", "transformer-lens", "ray"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


# --- the driver side: what to run, writing folders, results.csv --------------------------------------------
@dataclass
class SweepReport:
    out: Path
    cells: list[Cell]
    ran: list[str] = field(default_factory=list)  # keys run now (done or failed)
    skipped: list[str] = field(default_factory=list)  # keys left alone (done before and unchanged, or failed before)
    stale: dict[str, list[str]] = field(default_factory=dict)  # folder -> what changed, for done cells run again
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # folder -> error record, every failed cell

    @property
    def ok(self) -> bool:
        return not self.failed

    def failure_table(self) -> str:
        rows = [f"{'cell':<60}  {'error':<22}  message", "-" * 110]
        rows += [f"{folder:<60}  {e['type']:<22}  {' '.join(e['message'].split())[:200]}"
                 for folder, e in sorted(self.failed.items())]
        return "\n".join(rows)


def status(out: Path, cell: Cell) -> str:
    folder = out / cell.folder
    return "done" if (folder / "meta.json").exists() else "failed" if (folder / "error.json").exists() else "pending"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)  # atomic: a killed driver leaves no half-written file


def write_result(out: Path, cell: Cell, result: dict[str, Any], backend: str) -> None:
    """The cell's folder from a worker's result: graph.json then meta.json (the done marker), or error.json."""
    folder = out / cell.folder
    folder.mkdir(parents=True, exist_ok=True)
    meta = {**result["meta"], "folder": cell.folder, "backend": backend}
    if "error" in result:
        _write_json(folder / "error.json", {**meta, "error": result["error"]})
        for name in ("meta.json", "graph.json"):  # a done cell that now fails (e.g. its prompt file broke) is failed
            (folder / name).unlink(missing_ok=True)
        return
    graph: HeadGraph = result["graph"]
    tmp = graph.to_json(folder / "graph.json.tmp")
    os.replace(tmp, folder / "graph.json")
    gm = graph.meta
    gap = gm["metric_clean"] - gm["metric_corrupted"] if "metric_clean" in gm else None
    summary = {"top_heads": [[name, score] for name, score in graph.top(5, by="signed")], "metric_gap": gap}
    _write_json(folder / "meta.json", {**meta, **summary})
    (folder / "error.json").unlink(missing_ok=True)  # a failed cell that now succeeded


def crash_result(cell: Cell, error: BaseException, attempts: int) -> dict[str, Any]:
    """The record of a cell whose worker died on every attempt."""
    record = {"type": type(error).__name__, "message": f"the worker died on each of {attempts} attempt(s): {error}",
              "deterministic": False, "traceback": ""}
    return {"error": record, "meta": {"key": cell.key, "cell": cell.config(), "seconds": None}}


RESULT_COLUMNS = ("key", "folder", "status", "task", "model", "engine", "options", "seed", "n", "top_heads",
                  "metric_gap", "seconds", "device", "error")


def write_results_csv(out: Path) -> Path:
    """``results.csv``, one row per cell folder under `out` (rebuilt from the folders every time)."""
    rows = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        done, failed = folder / "meta.json", folder / "error.json"
        if not (done.exists() or failed.exists()):
            continue
        record = json.loads((done if done.exists() else failed).read_text())
        cell = record["cell"]
        top = " ".join(f"{name}={score:.4g}" for name, score in record.get("top_heads", []))
        gap = record.get("metric_gap")
        rows.append({"key": record["key"], "folder": folder.name, "status": "done" if done.exists() else "failed",
                     "task": cell["task"]["name"], "model": cell["model"]["name"], "engine": cell["engine"]["name"],
                     "options": canonical(cell["engine"]["options"]), "seed": cell["seed"], "n": cell["n"],
                     "top_heads": top, "metric_gap": "" if gap is None else f"{gap:.6g}",
                     "seconds": "" if record.get("seconds") is None else f"{record['seconds']:.3f}",
                     "device": record.get("device") or "",
                     "error": "" if done.exists() else f"{record['error']['type']}: {record['error']['message']}"})
    path = out / "results.csv"
    tmp = path.with_name("results.csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def dry_run_table(spec: Spec, out: Union[str, Path]) -> str:
    out = Path(out)
    rows = [f"{'status':<8}  {'cell':<64}  resources", "-" * 96]
    for cell in spec.cells():
        gpus = f", {cell.model.num_gpus:g} GPU" if cell.model.num_gpus else ""
        rows.append(f"{status(out, cell):<8}  {cell.folder:<64}  {cell.model.num_cpus:g} CPU{gpus}")
    return "\n".join(rows) + f"\n{len(rows) - 2} cells"


def _run_local(groups: dict[str, list[Cell]], on_result: Callable[[Cell, dict[str, Any]], None],
               recorded: dict[str, dict[str, str]]) -> None:
    for cells in groups.values():
        runner = CellRunner()  # one loaded model per group, dropped before the next group's
        for cell in cells:
            on_result(cell, runner.run(cell, recorded.get(cell.key)))


def recorded_fingerprints(out: Path, cell: Cell) -> dict[str, str]:
    """The fingerprints a done cell recorded in its meta.json ({} where it recorded none: it is run again)."""
    return json.loads((out / cell.folder / "meta.json").read_text()).get("fingerprints") or {}


def sweep(spec: Union[Spec, dict[str, Any], str, Path], out: Union[str, Path], *, backend: str = "local",
          address: Optional[str] = None, retries: int = 2, retry_failed: bool = False, verify: bool = True,
          progress: bool = True) -> SweepReport:
    """Run every cell of `spec` not yet done (or, with `retry_failed`, only the failed ones) into `out`.

    `backend`: ``"local"`` (this process) or ``"ray"`` (``ray.init(address=address)`` unless Ray is already
    initialised; one actor per model; a dead worker is restarted and its cells retried `retries` times).
    `verify`: done cells are checked against the prompts and weights they recorded (their models load for it, and
    their batches are built) and run again where those changed (``report.stale``); False trusts them unchecked.
    Returns a `SweepReport`; ``report.ok`` is False while any cell has failed."""
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, list(BACKENDS))
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidOptionError(f"retries={retries!r}; expected a non-negative integer")
    spec = Spec.load(spec)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidOptionError(f"out {str(out)!r} is a file; expected a folder (made if missing)")
    out.mkdir(parents=True, exist_ok=True)
    cells = spec.cells()
    report = SweepReport(out=out, cells=cells)
    wanted = {"failed"} if retry_failed else {"pending", "done"} if verify else {"pending"}
    todo = [cell for cell in cells if status(out, cell) in wanted]
    recorded = {cell.key: recorded_fingerprints(out, cell) for cell in todo if status(out, cell) == "done"}
    todo_keys = {cell.key for cell in todo}
    report.skipped = [cell.key for cell in cells if cell.key not in todo_keys]
    groups: dict[str, list[Cell]] = {}
    for cell in todo:
        groups.setdefault(cell.group, []).append(cell)
    bar = tqdm(total=len(todo), desc="sweep", unit="cell", disable=not progress)

    def on_result(cell: Cell, result: dict[str, Any]) -> None:
        bar.update(1)
        if result.get("unchanged"):
            report.skipped.append(cell.key)
            return
        write_result(out, cell, result, backend)
        report.ran.append(cell.key)
        if result["meta"].get("stale"):
            report.stale[cell.folder] = result["meta"]["stale"]
        if "error" in result:
            bar.set_postfix(failed=sum(status(out, c) == "failed" for c in todo))

    try:
        if backend == "local":
            _run_local(groups, on_result, recorded)
        elif todo:
            from circuits.sweeps import ray_backend

            ray_backend.run(groups, on_result, retries=retries, address=address, recorded=recorded)
    finally:
        bar.close()
        write_results_csv(out)
    for cell in cells:
        if status(out, cell) == "failed":
            report.failed[cell.folder] = json.loads((out / cell.folder / "error.json").read_text())["error"]
    return report
