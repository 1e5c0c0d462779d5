"""Every engine on each task, side by side: rank agreement and MIB faithfulness curves (`circuits.compare`).

    python -m analyses.compare [--task T ...] [--quick] [--out DIR]     (also: circuits compare --task T)

For each task (default: every registered task) it runs every registered engine on the task's default model, then
compares their HeadGraphs: Spearman of |head scores| and top-k Jaccard per engine pair, and faithfulness curves
(top heads by |score| kept, the rest mean-ablated at hook_z over reference prompts; CPR = area under the curve,
CMD = area between it and 1) against random circuits of each size. Writes into DIR:

- compare_<task>.png: the curves beside the Spearman and Jaccard matrices; compare_<task>.json: every number;
- compare.md and compare.csv: one table of CPR/CMD for all tasks x engines (and the random baseline), then
  each task's detailed table; summary.json: the headline numbers (for `make figures`' manifest).

Engines that score edges into heads' q/k/v inputs (path patching, edge attribution) are judged by MIB edge circuits
(edge ablation by patching, CPR/CMD against random edge circuits), the others by head circuits (`circuits.compare`);
every table row says which. Engines run with their defaults, except CD-T with no head -> head edges (its head scores
are the same; its edges measure shares, so it is judged by heads either way) and, on SmolLM2, path patching only to
the logits (every head as a receiver is too slow there): then it has no q/k/v edges and is judged by heads.
Faithfulness is measured on prompts held out from the engines' (seed 1, reference means seed 2).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import circuits
import tasks
from circuits.errors import InvalidOptionError
from analyses import _task_args
from analyses._script import add_figure_arguments, at_most_two_threads

if TYPE_CHECKING:  # imported when used: `circuits compare --help` (add_arguments) loads no torch
    from circuits.comparison import Comparison
    from circuits.graph import HeadGraph

ENGINE_OPTIONS = {"cdt": {"receiver_count": 0}}
BUNDLED = ("factual_recall", "capitals")  # tasks on SmolLM2: loaded once, smaller settings
BUNDLED_OPTIONS = {"path_patching": {"receivers": "logits", "per_input": False}}  # SmolLM2: to the logits only


@dataclass(frozen=True)
class Settings:
    n: int  # prompts the engines score heads on (seed 0)
    n_eval: int  # prompts faithfulness is measured on (seed 1) and the reference means (seed 2)
    draws: int  # random circuits per size


FULL = {"induction": Settings(128, 128, 20), "icl_regression": Settings(512, 512, 20),
        "factual_recall": Settings(4, 8, 5), "capitals": Settings(4, 8, 5)}
QUICK = {"induction": Settings(32, 32, 10), "icl_regression": Settings(128, 256, 10),
         "factual_recall": Settings(2, 4, 3), "capitals": Settings(2, 4, 3)}
DEFAULT = Settings(32, 32, 10)  # a task registered later


def task_for(name: str, quick: bool) -> Any:
    """The registered task; under --quick its small variant where it has one (e.g. regular_languages: a model
    trained in seconds; the default model is shipped but its engines take minutes)."""
    task = tasks.get(name)
    return task.quick() if quick and hasattr(task, "quick") else task


def sweep_graphs(folder: Path, task_name: str, engine_names: Sequence[str]) -> dict[str, HeadGraph]:
    """The seed-0 graphs of `task_name` on its default model in a `circuits sweep` output folder, per engine
    (what `make figures` computes first, with sweeps/figures.toml)."""
    with (folder / "results.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle)
                if (row["status"], row["task"], row["model"], row["seed"]) == ("done", task_name, "default", "0")
                and row["engine"] in engine_names]
    engines = [row["engine"] for row in rows]
    if len(set(engines)) < len(engines):
        raise InvalidOptionError(f"{folder}/results.csv has several seed-0 cells per engine for {task_name!r} "
                                 f"({sorted(engines)}); expected one each")
    return {row["engine"]: circuits.HeadGraph.from_json(folder / row["folder"] / "graph.json") for row in rows}


def compare_task(task: Any, model: Any, settings: Settings, engine_names: Sequence[str],
                 given: Optional[dict[str, HeadGraph]] = None) -> dict[str, Any]:
    """Every engine's graph (taken from `given` where there, else discovered now), then `circuits.compare`."""
    graphs, seconds = dict(given or {}), {}
    for engine in engine_names:
        if engine in graphs:
            print(f"  {engine}: from the sweep (n={graphs[engine].meta.get('n')})", flush=True)
            continue
        start = time.perf_counter()
        options = {**ENGINE_OPTIONS.get(engine, {}),
                   **(BUNDLED_OPTIONS.get(engine, {}) if getattr(task, "name", None) in BUNDLED else {})}
        graphs[engine] = circuits.discover(model, task, engine=engine, n=settings.n, seed=0, **options)
        seconds[engine] = round(time.perf_counter() - start, 2)
        print(f"  {engine}: {seconds[engine]} s; top {graphs[engine].top(3, by='absolute')}", flush=True)
    start = time.perf_counter()
    result = circuits.compare(graphs, model, task, n=settings.n_eval, seed=1, draws=settings.draws)
    seconds["compare"] = round(time.perf_counter() - start, 2)
    return {"result": result, "seconds": seconds, "settings": settings}


def record(result: Comparison, seconds: dict[str, float],
           settings: Settings) -> dict[str, Any]:
    """Everything about one task's comparison, JSON-ready."""
    return {"task": result.task, "model": result.model, "settings": vars(settings) | result.settings,
            "held_out": result.held_out_note or "yes",
            "seconds": seconds, "k": result.k, "metric_full": result.metric_full, "metric_empty": result.metric_empty,
            "rows": result.rows(), "top": result.top,
            "spearman": {f"{a} · {b}": rho for (a, b), rho in result.spearman.items()},
            "jaccard": {f"{a} · {b}": value for (a, b), value in result.jaccard.items()},
            "kinds": result.kinds,
            "curves": {name: {"sizes": c.sizes, "faithfulness": c.faithfulness} for name, c in result.curves.items()},
            "random": {"sizes": result.random.sizes, "faithfulness": result.random.faithfulness,
                       "draws": result.random_draws},
            "edge_curves": None if result.edges is None else {
                "ablation": result.edges.ablation, "total_edges": result.edges.total_edges,
                "full": result.edges.full, "empty": result.edges.empty,
                "curves": {name: vars(c) for name, c in result.edges.curves.items()},
                "random": vars(result.edges.random), "random_draws": result.edges.random_draws}}


def overall_table(records: list[dict[str, Any]]) -> str:
    lines = ["| task | engine | circuit | CPR ↑ | CMD ↓ | top-k head faithfulness | k |", "|---|---|---|---|---|---|---|"]
    for rec in records:
        k = rec["k"]
        for row in rec["rows"]:
            lines.append(f"| {rec['task']} | {row['engine']} | {row['kind']} | {row['cpr']:.3f} | {row['cmd']:.3f} | "
                         f"{row[f'faithfulness_top{k}']:.3f} | {k} |")
    return "\n".join(lines)


def write_tables(records: list[dict[str, Any]], details: list[str], out: Path) -> None:
    (out / "compare.md").write_text("# Engines compared: CPR and CMD per task\n\n" + overall_table(records)
                                    + "\n\n" + "\n\n".join(details) + "\n")
    with (out / "compare.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "model", "engine", "cpr", "cmd", "k", "faithfulness_top_k", "top_k_heads", "circuit"])
        for rec in records:
            for row in rec["rows"]:
                top_k = row[f"faithfulness_top{rec['k']}"]
                writer.writerow([rec["task"], rec["model"], row["engine"], f"{row['cpr']:.4f}", f"{row['cmd']:.4f}",
                                 rec["k"], f"{top_k:.4f}", row["top_heads"], row["kind"]])


def run(task_names: Optional[Sequence[str]] = None, quick: bool = False, out: Path = Path("out/compare"),
        engine_names: Optional[Sequence[str]] = None, models: Optional[dict[str, Any]] = None,
        graphs: Optional[Path] = None, task_objects: Optional[dict[str, Any]] = None,
        model: Optional[str] = None) -> dict[str, Any]:
    """Compare `engine_names` (default: all) on `task_names` (default: every ready-made task, unless `task_objects`
    are given) and on `task_objects` (label -> a task built already, e.g. ``tasks.prompts(file)``: every prompt it
    has, for the engines and for faithfulness); `models` maps a task name to a model already loaded, `model` names
    one (a folder or a hub name, `circuits.models.load`) for every task, else each task's default model (SmolLM2 is
    loaded once for its tasks); `graphs` is a `circuits sweep` output folder whose seed-0 default-model graphs are
    used instead of running those engines."""
    start = time.perf_counter()
    task_names = list(task_names) if task_names else [] if task_objects else tasks.ready_made()
    for name in task_names:
        _task_args.registered_task(name)  # an unknown task fails here, before any model loads
    engine_names = list(engine_names or circuits.engines.for_trained_models())
    for name in engine_names:
        circuits.engines.get(name)
    if out.exists() and not out.is_dir():  # say so before the run, not after it
        raise InvalidOptionError(f"--out {str(out)!r} is a file; expected a folder (made if missing)")
    chosen = [(name, task_for(name, quick), (QUICK if quick else FULL).get(name, DEFAULT)) for name in task_names]
    draws = (QUICK if quick else FULL).get("induction", DEFAULT).draws
    for name, task in (task_objects or {}).items():
        size = getattr(task, "size", DEFAULT.n)
        chosen.append((name, task, Settings(size, size, draws)))
    out.mkdir(parents=True, exist_ok=True)
    loaded = dict(models or {})
    if model is not None:
        print(f"loading model {model!r}...", flush=True)
        loaded["given"] = circuits.models.load(model)
    records, details = [], []
    for name, task, settings in chosen:
        key = "given" if model is not None else "bundled" if name in BUNDLED and name not in loaded else name
        if key not in loaded:
            print(f"loading the default model of {name!r}...", flush=True)
            loaded[key] = task.default_model()
        print(f"{name}: {len(engine_names)} engines on {settings.n} prompts, faithfulness on {settings.n_eval}",
              flush=True)
        given = sweep_graphs(graphs, name, engine_names) if graphs is not None else None
        done = compare_task(task, loaded[key], settings, engine_names, given)
        result = done["result"]
        stem = name.replace(":", "-")
        result.draw(out / f"compare_{stem}.png")
        rec = record(result, done["seconds"], settings)
        (out / f"compare_{stem}.json").write_text(json.dumps(rec, indent=1))
        records.append(rec)
        details.append(result.table())
        print(result.table(), flush=True)
    write_tables(records, details, out)
    summary = {"quick": quick, "tasks": [name for name, _, _ in chosen], "engines": engine_names,
               "headline": {f"{rec['task']}/{row['engine']}": {"cpr": round(row["cpr"], 4), "cmd": round(row["cmd"], 4)}
                            for rec in records for row in rec["rows"]},
               "spearman": {rec["task"]: rec["spearman"] for rec in records},
               "seconds": round(time.perf_counter() - start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}/compare_*.png, compare.md, compare.csv, summary.json in {summary['seconds']} s")
    return summary


def run_from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """`run` with the command line's arguments (`circuits compare` and ``python -m analyses.compare``); a
    ``--prompts`` file is read and checked before any model loads."""
    task = _task_args.prompt_task(args)
    return run(args.task, quick=args.quick, out=args.out, engine_names=args.engine, graphs=args.graphs,
               task_objects={task.name: task} if task is not None else None, model=args.model)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", action="append", default=None,
                        help=f"a task to compare on (repeatable; default: all of {', '.join(tasks.names())})")
    parser.add_argument("--engine", action="append", default=None,
                        help="an engine to compare (repeatable; default: every engine that scores a trained model as "
                             f"it is, of {', '.join(circuits.engines.names())})")
    add_figure_arguments(parser, "out/compare", "fewer prompts and random draws (SmolLM2: 2 prompts)")
    parser.add_argument("--graphs", type=Path, default=None,
                        help="a `circuits sweep` output folder: use its seed-0 default-model graphs (make figures)")
    _task_args.add_arguments(parser)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    at_most_two_threads()
    return run_from_arguments(args)


if __name__ == "__main__":
    main()
