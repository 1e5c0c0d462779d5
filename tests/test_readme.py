"""The README's library example runs as written, and the numbers it shows are the ones it produces."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def library_example() -> str:
    section = README.read_text().split("## As a library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_library_example_runs_and_shows_its_own_numbers(tmp_path, monkeypatch, induction_model):
    code = library_example()
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    shown = ast.literal_eval(re.search(r'graph\.top\(3, by="signed"\)\s+# (\[.*\])', code).group(1))
    measured = namespace["graph"].top(3, by="signed")
    assert [name for name, _ in measured] == [name for name, _ in shown]
    assert [score for _, score in measured] == pytest.approx([score for _, score in shown], abs=5e-4)
    assert (tmp_path / "g.json").exists() and (tmp_path / "g.png").exists()
