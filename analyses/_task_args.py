"""The command line's task and model arguments, shared by ``circuits discover`` and ``circuits compare``:
``--prompts FILE`` (your own prompt pairs, `tasks.prompts`) with ``--metric`` and ``--first-token``, and ``--model``
(a local Hugging Face folder or a hub name instead of the task's default model). Everything here is checked before
a model loads: a bad file, an unknown metric or engine option fails in a fraction of a second."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from circuits.errors import InvalidOptionError

METRICS = ("logit_difference", "log_probability", "probability", "kl_divergence")  # circuits.metrics.NAMED (no torch)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help="your own prompt pairs: .jsonl/.json records {clean, corrupted, answer, foil?}, "
                             "auto-circuit's JSON, a CSV (clean, corrupted, answer, foil?) or EAP-IG's CSV "
                             "(docs: Your own prompts)")
    parser.add_argument("--metric", default=None, choices=METRICS,
                        help="with --prompts: the metric (default logit_difference with foils, else log_probability)")
    parser.add_argument("--first-token", action="store_true",
                        help="with --prompts: read multi-token answers at their first token instead of refusing them")
    parser.add_argument("--model", default=None, metavar="M",
                        help="a local Hugging Face folder or a hub name (offline: only what is in the local cache); "
                             "default: the task's own model (the bundled SmolLM2 for --prompts)")


def prompt_task(args: argparse.Namespace) -> Optional[Any]:
    """The ``--prompts`` task (its file read and checked now), or None without ``--prompts``; ``--metric`` and
    ``--first-token`` without it are refused."""
    if args.prompts is None:
        for flag, given in (("--metric", args.metric is not None), ("--first-token", args.first_token)):
            if given:
                raise InvalidOptionError(f"{flag} applies to --prompts FILE; a registered task has its own metric")
        return None
    import tasks

    return tasks.prompts(args.prompts, metric=args.metric, first_token=args.first_token)


def registered_task(name: str) -> Any:
    """The registered task `name`; one that needs options (``prompts``) is refused with the flag to use instead."""
    import tasks
    from circuits.errors import MissingOptionError

    try:
        return tasks.get(name)
    except MissingOptionError as error:
        raise InvalidOptionError(f"{error} (on the command line: --prompts FILE for your own prompt pairs)") from None


def model_for(args: argparse.Namespace, task: Any, label: str) -> Any:
    """``--model`` loaded, else `task`'s default model (with a line saying which)."""
    import circuits

    if args.model is not None:
        print(f"loading model {args.model!r}...", flush=True)
        return circuits.models.load(args.model)
    print(f"loading the default model of {label} (shipped; else trained or converted and cached on first use)...", flush=True)
    return task.default_model()
