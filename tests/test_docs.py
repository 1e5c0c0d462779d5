"""The documentation site builds with `mkdocs build --strict`: a broken link or anchor, a missing page in the nav,
an API page whose object does not exist, or a snippet whose file is missing fails the build (and `make test`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner, not a docs problem
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:] + "\n(needs: pip install -e '.[docs]')"
    site = tmp_path / "site"
    assert "HeadGraph" in (site / "api" / "graph" / "index.html").read_text()  # mkdocstrings rendered the API
    assert "Two commands" in (site / "index.html").read_text()  # the README is the home page
