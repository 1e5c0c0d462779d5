"""Train the shipped default models again and write them as package data (`make models`).

    python -m analyses.models [--only NAME ...] [--reuse-cache] [--check] [--out DIR]

For every default (`tasks.shipped.defaults`: induction, ICL regression with 1, 2 and 4 heads, few-shot, regular
languages) it trains the model by its task's recipe (``retrain=True``: nothing shipped or cached is reused), prints
its headline numbers and the training time, and writes ``{name}.safetensors`` and ``{name}.json`` (the recipe hash,
the config, the spec, the headline numbers) into DIR (default ``tasks/data/models``, the package data). Then it
reads the written files back as a first use would and checks that they give the same headline numbers.

``--reuse-cache`` ships what ``$CIRCUITS_CACHE`` already holds for the current recipe (training only what is
missing); ``--check`` trains nothing and says, per default, whether its shipped weights fit the current recipe.
Training regular languages takes 33-36 minutes on one thread; the others take seconds to minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from tasks import shipped


def check(names: list[str], folder: Path) -> int:
    """Print whether each default's shipped weights fit the current recipe; 1 if any does not."""
    stale = 0
    for default in map(shipped.get, names):
        trained = dataclasses.replace(default.training(False), shipped=folder)
        record = trained.record()
        state = ("missing" if record is None else "current" if record.get("key") == trained.key()
                 else f"STALE (shipped {record.get('key')}, recipe {trained.key()})")
        stale += state != "current"
        print(f"{default.name:20s} {state}")
    return int(bool(stale))


def ship(name: str, folder: Path, reuse_cache: bool) -> dict[str, Any]:
    """Train (or read from the cache) one default, write its shipped files, read them back; its numbers."""
    default = shipped.get(name)
    trained = dataclasses.replace(default.training(True), shipped=None)  # never read the old shipped files
    print(f"{name}: {'reading or training' if reuse_cache else 'training'} ({default.about})", flush=True)
    start = time.perf_counter()
    model = trained.load(retrain=not reuse_cache)
    seconds = time.perf_counter() - start
    headline = default.headline(model)
    info: dict[str, Any] = {"about": default.about, "headline": headline,
                            "training_seconds": round(seconds, 1) if not reuse_cache else None}
    if name == "regular_languages":  # its analysis plots the measures along training
        from tasks.regular_languages import RegularLanguages

        info["history"] = RegularLanguages().history()
    weights = dataclasses.replace(trained, shipped=folder).ship(info)

    start = time.perf_counter()
    first_use = dataclasses.replace(trained, shipped=folder).from_shipped()
    loaded = time.perf_counter() - start
    if first_use is None:
        raise RuntimeError(f"the shipped {name} at {weights} could not be read back")
    again = default.headline(first_use)
    same = all(abs(again[k] - v) <= 1e-6 * max(1.0, abs(v)) for k, v in headline.items())
    print(f"  {_numbers(headline)}; trained in {seconds:.0f} s; {weights} "
          f"({weights.stat().st_size / 1024:.0f} KiB); read back in {loaded:.2f} s, "
          f"{'same numbers' if same else 'DIFFERENT numbers: ' + _numbers(again)}", flush=True)
    if not same:
        raise RuntimeError(f"the shipped {name} does not reproduce its headline numbers")
    return {"name": name, "headline": headline, "training_seconds": info["training_seconds"],
            "load_seconds": round(loaded, 2)}


def _numbers(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in values.items())


def main(argv: list[str] | None = None) -> int:
    names = [d.name for d in shipped.defaults()]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=names, default=names, metavar="NAME",
                        help=f"these defaults only (of: {', '.join(names)})")
    parser.add_argument("--reuse-cache", action="store_true", help="ship cached weights of the current recipe")
    parser.add_argument("--check", action="store_true", help="train nothing; report stale or missing weights")
    parser.add_argument("--out", type=Path, default=shipped.FOLDER, help="where the shipped files go")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.only, args.out)
    import torch

    torch.set_num_threads(1)  # small models: more threads only add synchronisation (several times slower when busy)
    summary = [ship(name, args.out, args.reuse_cache) for name in args.only]
    print(json.dumps([{k: v for k, v in s.items() if v is not None} for s in summary], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
