"""`circuits sweep`: the same 16-cell sweep with the ``local`` backend and with ``ray`` on 2 CPUs.

Cells: those of the shipped `sweeps/example.toml`: induction and icl_regression (their trained default models)
x activation patching, path patching, EAP-IG (8 steps) and CD-T x seeds 0 and 1, 32 prompts each. Printed: Ray's start-up (``ray.init(num_cpus=2)``), the
local and Ray sweep times (each into a fresh folder, models read from the cache), the time the workers spent
in cells and in loading models (from meta.json), and whether both backends gave equal graphs.
On 2 cores expect little gain: the point is that the same spec runs unchanged on a cluster.
`python -m benchmarks.sweep [--cpus 2] [--n 32] [--out DIR]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Optional

import circuits
from circuits.graph import HeadGraph
from circuits.sweeps import Spec


EXAMPLE = Path(__file__).resolve().parents[1] / "sweeps" / "example.toml"


def spec(n: int) -> Spec:
    """The shipped example spec (sweeps/example.toml), with `n` prompts per cell."""
    return replace(Spec.load(EXAMPLE), n=n)


def worker_seconds(out: Path) -> tuple[float, float]:
    metas = [json.loads(p.read_text()) for p in out.glob("*/meta.json")]
    return sum(m["seconds"] - m["load_seconds"] for m in metas), sum(m["load_seconds"] for m in metas)


def graphs(out: Path) -> dict[str, HeadGraph]:
    return {p.parent.name: HeadGraph.from_json(p) for p in out.glob("*/graph.json")}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--out", default=None, help="folder for the two sweeps (default: a temporary one)")
    args = parser.parse_args(argv)
    import ray

    root = Path(args.out or tempfile.mkdtemp(prefix="sweep-bench-"))
    for backend in ("local", "ray"):
        shutil.rmtree(root / backend, ignore_errors=True)
    sweep = spec(args.n)
    for task in sweep.tasks:  # train (once) and cache the default models outside the timings
        task.build().default_model()

    start = time.perf_counter()
    local = circuits.sweep(sweep, root / "local", backend="local", progress=False)
    local_seconds = time.perf_counter() - start

    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    remote = circuits.sweep(sweep, root / "ray", backend="ray", progress=False)
    ray_seconds = time.perf_counter() - start
    ray.shutdown()

    assert local.ok and remote.ok and len(local.ran) == len(remote.ran) == len(sweep.cells()) == 16
    same = graphs(root / "local") == graphs(root / "ray")
    print(f"16 cells (2 tasks x 4 engines x 2 seeds, n={args.n}), folders under {root}")
    for name, seconds, out in (("local", local_seconds, root / "local"), ("ray", ray_seconds, root / "ray")):
        in_cells, loading = worker_seconds(out)
        print(f"{name:>6}: {seconds:6.1f} s wall  (cells {in_cells:5.1f} s, model loading {loading:4.1f} s)")
    print(f"ray.init(num_cpus={args.cpus}): {startup:.1f} s (not in the ray sweep time above)")
    print(f"same graphs from both backends: {same}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
