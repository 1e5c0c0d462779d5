"""Make the IOI prompt set shipped for the bundled SmolLM2 (tasks/data/ioi_smollm2.jsonl) and its recipe.

    python -m analyses.ioi_data [--n 400] [--seed 0] [--out tasks/data/ioi_smollm2.jsonl]

Generates `--n` prompts from the templates of `tasks.ioi` (Wang et al. 2022 style; ABC corruption; names that are
one token under SmolLM2's tokenizer), keeps those whose clean prompt the model gets right (logit of the indirect
object above the subject's at the end) and writes them as prompt-pairs JSONL (clean, corrupted, answer, foil;
spans and names under ``meta``), with a side JSON (the recipe: seed, model, names used and refused, how many were
generated and kept per template and order, mean logit differences). Deterministic: the same seed and model give the
same file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

from tasks import ioi


def make(model: Any, n: int, seed: int, out: Path) -> dict[str, Any]:
    """Generate, filter and write the set and its recipe (``<out stem>_recipe.json``); returns the recipe."""
    start = time.perf_counter()
    records = ioi.generate(model, n, seed)
    chosen, report = ioi.kept(model, records)
    usable = ioi.one_token_names(model)
    recipe = {
        "model": model.cfg.model_name, "seed": seed, "script": "python -m analyses.ioi_data "
        f"--n {n} --seed {seed}", **report,
        "names_one_token": usable, "names_refused": [name for name in ioi.NAMES if name not in usable],
        "templates": list(ioi.TEMPLATES), "places": list(ioi.PLACES), "objects": list(ioi.OBJECTS),
        "positions": "token positions in the clean prompt as the model reads it (0 is BOS)",
        "seconds": round(time.perf_counter() - start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    out.with_name(out.stem + "_recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    return recipe


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="prompts generated before filtering")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ioi.DATA)
    args = parser.parse_args(argv)
    import circuits
    from analyses._script import at_most_two_threads

    at_most_two_threads()
    recipe = make(circuits.models.bundled(), args.n, args.seed, args.out)
    print(f"{recipe['kept']} of {recipe['generated']} prompts kept (logit IO > S); top-1 rate "
          f"{recipe['top1_rate_all']} of all; mean logit diff {recipe['logit_diff_clean_mean_all']} (all), "
          f"{recipe['logit_diff_clean_mean_kept']} (kept), corrupted {recipe['logit_diff_corrupted_mean_kept']}; "
          f"{len(recipe['names_one_token'])} one-token names -> {args.out}")
    return recipe


if __name__ == "__main__":
    main()
