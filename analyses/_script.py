"""What every figure script shares: ``python -m analyses.<name> [--quick] [--out DIR]`` (the contract
`analyses.figures` relies on to run each script and find what it wrote)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_figure_arguments(parser: argparse.ArgumentParser, out: str, quick: str) -> None:
    """``--quick`` (help: `quick`, what the quick configuration shrinks) and ``--out`` (default `out`)."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, default=Path(out), help="output folder")


def figure_parser(doc: str, out: str, quick: str) -> argparse.ArgumentParser:
    """A parser with the script's docstring as description and the two shared arguments."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_figure_arguments(parser, out, quick)
    return parser


def at_most_two_threads() -> None:
    """Cap torch at two CPU threads (the machines have two cores; more only oversubscribes them)."""
    import torch  # here, so that building a parser (`circuits compare --help`) loads no torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
