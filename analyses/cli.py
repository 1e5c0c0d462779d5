"""The `circuits` console command: discover circuits, compare engines, run sweeps, view graphs, list tasks and
engines."""

# Start-up stays light: `circuits --help`, `tasks`, `engines` and argument errors import neither torch nor
# TransformerLens (`circuits` and `tasks` export lazily, names come from entry points); commands that run import
# what they need inside their functions. tests/test_plugins.py checks it.
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Optional

import circuits
import tasks
from analyses import _task_args, engine_options
from analyses import compare as analyses_compare
from circuits.errors import CircuitsError, InvalidOptionError


ORDER = {"signed": "by score (the heads that help most first)", "absolute": "by |score| (helping or hurting)"}


def _table(graph: circuits.HeadGraph, k: int, by: str) -> str:
    rows = [f"top heads, ordered {ORDER[by]}:", f"{'rank':>4}  {'head':<8}{'score':>9}", "-" * 23]
    rows += [f"{i:>4}  {name:<8}{score:>9.4f}" for i, (name, score) in enumerate(graph.top(k, by=by), 1)]
    return "\n".join(rows)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1, refused while parsing (before any model loads)."""
    return _at_least(1, text)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _at_least(0, text)


def _at_least(least: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected an integer >= {least}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is too small; expected an integer >= {least}")
    return value


def _edges_table(graph: circuits.HeadGraph, k: int, by: str) -> str:
    """The top `k` edges of each effect a graph engine measures (not the "total" head -> logits edges of activation
    patching and CD-T, which repeat the node scores); empty for a graph without such edges."""
    blocks = []
    for effect in sorted(e for e in graph.effects() if e not in (None, "total")):
        rows = [f"top edges (effect {effect!r}), ordered {ORDER[by]}:",
                f"{'rank':>4}  {'sender':<8}  {'receiver':<10}{'score':>9}", "-" * 35]
        rows += [f"{i:>4}  {u:<8}  {v:<10}{score:>9.4f}" for i, (u, v, score)
                 in enumerate(graph.top_edges(k, by=by, effect=effect), 1)]
        blocks.append("\n".join(rows))
        if graph.meta.get("positions"):  # engines run with positions="tokens" or "spans"
            key = abs if by == "absolute" else (lambda score: score)
            ranked = sorted(graph.scored_edges(effect, positional=True), key=lambda e: key(e[1]), reverse=True)[:k]
            rows = [f"top edges at one position ({graph.meta['positions']['kind']}; effect {effect!r}), ordered "
                    f"{ORDER[by]}:", f"{'rank':>4}  {'edge':<34}{'score':>9}", "-" * 47]
            rows += [f"{i:>4}  {edge.name:<34}{score:>9.4f}" for i, (edge, score) in enumerate(ranked, 1)]
            blocks.append("\n".join(rows))
    return "\n\n".join(blocks)


def _discover(args: argparse.Namespace) -> int:
    # Everything that can be checked without a model is checked first: nothing loads, and nothing is written to
    # --out, when the input is bad.
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidOptionError(f"--out {str(out)!r} is a file; expected a folder (made if missing)")
    if (args.task is None) == (args.prompts is None):
        raise InvalidOptionError("expected one of --task NAME or --prompts FILE")
    options = engine_options.parse(args.engine, args.option)
    if args.direction is not None:
        if options.get("direction", args.direction) != args.direction:
            raise InvalidOptionError(f"--direction {args.direction} and --option direction={options['direction']} "
                                     "disagree; expected one of them")
        options["direction"] = args.direction
    engine = circuits.engines.get(args.engine, **options)  # option values checked by the engine
    task = _task_args.prompt_task(args) or _task_args.registered_task(args.task)
    label = f"--prompts {args.prompts}" if args.prompts else f"task {args.task!r}"
    n = args.n if args.n is not None else (task.size if args.prompts else 32)
    model = _task_args.model_for(args, task, label)
    graph = circuits.discover(model, task, engine=engine, n=n, seed=args.seed)
    meta = graph.meta
    clean, corrupted = meta.get("metric_clean", float("nan")), meta.get("metric_corrupted", float("nan"))
    print(f"\n{args.engine} on {task.name} ({meta['model']}): metric clean {clean:.3f}, "
          f"corrupted {corrupted:.3f} (n={meta['n']}, seed={args.seed})")
    print(f"score: {meta['score']}\n")
    print(_table(graph, args.top, args.by))
    edges = _edges_table(graph, args.top, args.by)
    if edges:
        print(f"\n{edges}")
    json_path = graph.to_json(out / "graph.json")
    png_path = out / "graph.png"
    graph.draw(png_path, by=args.by)  # titled engine · task · model, as graph.draw() from Python
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    analyses_compare.run_from_arguments(args)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from circuits.sweeps import Spec, dry_run_table

    spec = Spec.load(args.spec)
    if args.dry_run:
        print(dry_run_table(spec, args.out))
        return 0
    report = circuits.sweep(spec, args.out, backend=args.backend, address=args.address, retries=args.retries,
                            retry_failed=args.retry_failed, verify=not args.no_verify)
    print(f"ran {len(report.ran)} cells, left {len(report.skipped)} alone; {report.out / 'results.csv'}")
    for folder, changed in sorted(report.stale.items()):
        print(f"  ran again, its {' and '.join(changed)} changed since it was done: {folder}")
    if report.failed:
        print(f"\n{len(report.failed)} failed cells (rerun them with --retry-failed):\n{report.failure_table()}",
              file=sys.stderr)
        return 1
    return 0


def _view(args: argparse.Namespace) -> int:
    import json

    from circuits import view
    from circuits.graph import HeadGraph

    out = Path(args.out)
    if out.is_dir():
        raise InvalidOptionError(f"--out {str(out)!r} is a folder; expected an .html file to write")
    labels = args.labels.split(",") if args.labels else None
    if labels is not None and len(labels) != len(args.graphs):
        raise InvalidOptionError(f"--labels {args.labels!r} names {len(labels)} graphs; expected one label for each "
                                 f"of the {len(args.graphs)} graphs")
    graphs = []
    for path in map(Path, args.graphs):
        if not path.is_file():
            raise InvalidOptionError(f"graph file {str(path)!r} does not exist; expected a graph.json written by "
                                     "`circuits discover` or graph.to_json")
        try:
            graphs.append(HeadGraph.from_json(path))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            where = f" (line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
            raise InvalidOptionError(f"graph file {str(path)!r}{where} is not a graph ({error}); expected networkx "
                                     "node-link JSON as graph.to_json writes it") from None
    written = view.to_html(graphs, out, labels=labels, default_edges=args.edges, by=args.by,
                           positional_edges=args.positional_edges)
    print(f"wrote {written} ({written.stat().st_size / 1e6:.2f} MB; open it in a browser, no server needed)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuits", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    discover = commands.add_parser("discover", help="attribute a task's behaviour to attention heads")
    discover.add_argument("--task", default=None, help=f"one of: {', '.join(tasks.names())} (or --prompts FILE)")
    _task_args.add_arguments(discover)
    discover.add_argument("--engine", default="activation_patching",
                          help=f"one of: {', '.join(circuits.engines.names())}")
    discover.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                          help="an engine option, typed by the engine's field (repeatable): e.g. --option method=eap "
                               "--option steps=10; lists are comma-separated (--option receivers=L1H0,logits)")
    discover.add_argument("--out", default="out", help="folder for graph.json and graph.png")
    discover.add_argument("--n", type=positive_int, default=None,
                          help="number of prompts (default 32; with --prompts every row of the file)")
    discover.add_argument("--seed", type=int, default=0)
    discover.add_argument("--top", type=positive_int, default=10, help="rows of the printed table")
    discover.add_argument("--direction", choices=["denoising", "noising"], default=None)
    discover.add_argument("--by", choices=["signed", "absolute"], default="signed",
                          help="rank heads by score or by |score| (the table and the picture alike)")
    discover.set_defaults(run=_discover)
    compare = commands.add_parser("compare", help="every engine side by side: rank agreement, faithfulness curves")
    analyses_compare.add_arguments(compare)
    compare.set_defaults(run=_compare)
    sweep = commands.add_parser("sweep", help="run every cell of a TOML spec (docs/sweep.md), resumable")
    sweep.add_argument("spec", help="TOML file: tasks, models, engines (with options), seeds, n")
    sweep.add_argument("--out", required=True, help="folder with one subfolder per cell, and results.csv")
    sweep.add_argument("--backend", choices=["local", "ray"], default="local")
    sweep.add_argument("--address", default=None, help="Ray cluster address ('auto': the running cluster)")
    sweep.add_argument("--retries", type=non_negative_int, default=2,
                       help="restarts of a worker that dies (Ray backend)")
    sweep.add_argument("--retry-failed", action="store_true", help="rerun only the cells that failed")
    sweep.add_argument("--dry-run", action="store_true", help="print the cells and their status; run nothing")
    sweep.add_argument("--no-verify", action="store_true",
                       help="trust done cells without checking that their prompts and model weights are unchanged "
                            "(their models are not loaded)")
    sweep.set_defaults(run=_sweep)
    view = commands.add_parser("view", help="an interactive view of graphs in one HTML file (opens offline)")
    view.add_argument("graphs", nargs="+", metavar="GRAPH.json",
                      help="graph.json files of one task (several: an engine switch and a diff view)")
    view.add_argument("--out", required=True, help="the .html file to write")
    view.add_argument("--labels", default=None, help="comma-separated names for the graphs (default: their engines)")
    view.add_argument("--edges", type=positive_int, default=300,
                      help="edges drawn when the page opens (the slider brings in more)")
    view.add_argument("--by", choices=["signed", "absolute"], default="absolute",
                      help="rank edges by score or by |score| when the page opens")
    view.add_argument("--positional-edges", type=positive_int, default=2000,
                      help="for graphs scored per position: the edges at positions in the page (the top ones by "
                           "|score| and by score; the slider's maximum)")
    view.set_defaults(run=_view)
    commands.add_parser("tasks", help="list tasks").set_defaults(run=lambda a: print("\n".join(tasks.names())) or 0)
    commands.add_parser("engines", help="list engines").set_defaults(
        run=lambda a: print("\n".join(circuits.engines.names())) or 0)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except CircuitsError as error:
        print(f"circuits: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
