"""Regenerate every paper figure from `analyses/` and write a manifest (`make figures`, `make figures QUICK=1`).

    python -m analyses.figures [--quick] [--out figures] [--only analyses.compare ...] [--sweep SPEC.toml]

Each script in `SCRIPTS` runs as ``python -m <script> [--quick] --out <out>/<name>`` in its own process (a
crash or a leak in one does not touch the others), and `<out>/manifest.json` lists, per figure (every PNG the
script wrote): the script, its configuration (the command line), the seconds the script took, and its headline
numbers. Headline numbers come from the ``summary.json`` the script writes: its ``"headline"`` entry when it has
one, else every number in it up to two levels deep. A script that fails is recorded with its exit code and the
run continues; the exit code is then 1. A new analysis joins by taking the same ``--quick --out`` arguments
(`analyses._script.figure_parser`) and being added to `SCRIPTS`.

With ``--sweep SPEC`` (`make figures` passes sweeps/figures.toml) the spec's cells are computed first by
`circuits sweep` into ``<out>/sweep`` (resumable), `analyses.compare` takes the graphs it needs from there, and the
manifest records the sweep (cells run, skipped, failed, seconds); a failed cell makes the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import circuits

SCRIPTS = ["analyses.induction_paths", "analyses.icl_regression", "analyses.capitals", "analyses.factual_recall",
           "analyses.regular_languages", "analyses.induction_formation", "analyses.ioi", "analyses.positional",
           "analyses.compare"]


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's ``"headline"`` entry, else its numbers up to two levels deep (keys joined by "/")."""
    if isinstance(summary.get("headline"), dict):
        return summary["headline"]
    numbers: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[key] = value
        elif isinstance(value, dict):
            numbers.update({f"{key}/{k}": v for k, v in value.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return numbers


def run_script(script: str, quick: bool, out: Path, env: Optional[dict[str, str]] = None,
               extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run one analysis; what it wrote, how long it took and whether it succeeded."""
    folder = out / script.rsplit(".", 1)[-1]
    argv = [sys.executable, "-m", script, *(["--quick"] if quick else []), "--out", str(folder), *extra]
    print(f"== {' '.join(argv[1:])}", flush=True)
    start = time.perf_counter()
    returncode = subprocess.call(argv, env=env)
    seconds = round(time.perf_counter() - start, 2)
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() and returncode == 0 else {}
    return {"script": script, "config": {"quick": quick, "argv": argv[1:]}, "seconds": seconds,
            "returncode": returncode, "out": str(folder), "headline": headline(summary),
            "figures": sorted(str(p) for p in folder.rglob("*.png")) if returncode == 0 else []}


def build(scripts: Sequence[str] = tuple(SCRIPTS), quick: bool = False, out: Path = Path("figures"),
          env: Optional[dict[str, str]] = None, sweep_spec: Optional[Path] = None) -> dict[str, Any]:
    """Run `scripts` one after the other and write ``out/manifest.json``; returns the manifest.

    With `sweep_spec`, its cells are computed first by `circuits.sweep` into ``out/sweep`` (resumable: a rerun
    recomputes nothing already there) and `analyses.compare` takes its graphs from there (``--graphs``)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1"), **(env or {})}
    extra: dict[str, list[str]] = {}
    sweep_record = None
    if sweep_spec is not None:
        start = time.perf_counter()
        report = circuits.sweep(sweep_spec, out / "sweep")
        sweep_record = {"spec": str(sweep_spec), "out": str(out / "sweep"), "ran": len(report.ran),
                        "skipped": len(report.skipped), "failed": len(report.failed),
                        "seconds": round(time.perf_counter() - start, 2)}
        if report.failed:
            print(f"sweep: {len(report.failed)} failed cells\n{report.failure_table()}", file=sys.stderr)
        extra["analyses.compare"] = ["--graphs", str(out / "sweep")]
    runs = [run_script(script, quick, out, env, extra.get(script, ())) for script in scripts]
    figures = [{"figure": figure, "script": r["script"], "config": r["config"], "seconds": r["seconds"],
                "headline": r["headline"]} for r in runs for figure in r["figures"]]
    manifest = {"quick": quick, "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(sum(r["seconds"] for r in runs), 1), "figures": figures,
                "scripts": [{k: r[k] for k in ("script", "config", "seconds", "returncode", "out")} for r in runs],
                "sweep": sweep_record}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    failed = [r["script"] for r in runs if r["returncode"] != 0]
    failed += ["sweep"] if sweep_record and sweep_record["failed"] else []
    print(f"{len(figures)} figures from {len(runs)} scripts in {manifest['seconds']} s -> {out / 'manifest.json'}"
          + (f"; FAILED: {failed}" if failed else ""))
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every script in its --quick configuration")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder (a build output)")
    parser.add_argument("--only", action="append", default=None, help=f"a script to run (repeatable; default: {SCRIPTS})")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="a sweep spec (TOML) whose graphs analyses.compare uses (make figures: sweeps/figures.toml)")
    args = parser.parse_args(argv)
    manifest = build(args.only or SCRIPTS, quick=args.quick, out=args.out, sweep_spec=args.sweep)
    failed_sweep = bool(manifest["sweep"] and manifest["sweep"]["failed"])
    return 1 if failed_sweep or any(s["returncode"] != 0 for s in manifest["scripts"]) else 0


if __name__ == "__main__":
    sys.exit(main())
