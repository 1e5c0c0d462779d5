"""The wheel builds, installs (not editable) into a fresh venv with its package data, and the README's library
example runs there from outside the checkout.

Fast by construction: the wheel is built without build isolation (the test venv's setuptools), the fresh venv has
no pip of its own, and it reaches the test venv's dependencies (torch, transformer-lens, ...) through a ``.pth``
line. A directory added by a ``.pth`` line is not a site directory, so the test venv's own ``.pth`` files (the
editable install's import hook among them) are not run there: `circuits` can only come from the wheel.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.test_readme import README, library_example

ROOT = README.parent
DISTRIBUTION = "tl-circuits"
SHIPPED = ["pyproject.toml", "README.md", "LICENSE", "circuits", "tasks", "analyses"]

# Runs inside the fresh venv (python -I: no script directory, no PYTHON* variables on sys.path).
CHECKS = '''
import importlib.metadata as metadata, json, os, sys
import circuits, tasks, analyses
from circuits import models
from tasks import facts

dist = metadata.distribution("tl-circuits")
files = {str(f) for f in dist.files}
scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
print("CHECKS " + json.dumps({
    "files": {name: module.__file__ for name, module in
              (("circuits", circuits), ("tasks", tasks), ("analyses", analyses))},
    "sys_path": sys.path,
    "version": dist.version,
    "licence": [f for f in files if f.endswith("LICENSE")],
    "facts_json": "tasks/data/facts.json" in files,
    "ioi_data": [f in files for f in ("tasks/data/ioi_smollm2.jsonl", "tasks/data/ioi_smollm2_recipe.json")],
    "relations": facts.relation_names(),
    "gguf": str(models.bundled_gguf_path()),
    "scripts": scripts,
    "registered": {"tasks": tasks.names(), "engines": circuits.engines.names()},  # from the wheel's entry points
    "top3": graph.top(3, by="signed"),
    "viewer_files": sorted(f for f in files if f.startswith("circuits/view/") and not f.endswith((".py", ".pyc"))),
    "html_bytes": os.path.getsize("g.html"),  # the README's graph.to_html: scripts from the wheel
}))
'''


def build_wheel(tmp_path: Path) -> Path:
    """A copy of what the wheel ships (the checkout stays free of build/ and egg-info), built into a wheel."""
    source = tmp_path / "source"
    for name in SHIPPED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                    str(source)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    return wheel


def fresh_venv(path: Path) -> Path:
    """A venv without pip whose site-packages reaches the test venv's installed packages through a .pth line."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "test_venv_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def test_wheel_installs_and_runs_the_readme_example(tmp_path, induction_model):
    # induction_model: the README example's model is trained (or read) once into the shared cache
    wheel = build_wheel(tmp_path)
    assert wheel.name.startswith("tl_circuits-") and wheel.name.endswith("-py3-none-any.whl")
    venv = tmp_path / "venv"
    python = fresh_venv(venv)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True, text=True)

    work = tmp_path / "elsewhere"
    work.mkdir()
    code = library_example()
    (work / "example.py").write_text(code + CHECKS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([str(python), "-I", "example.py"], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    checks = json.loads(run.stdout.split("CHECKS ", 1)[1])

    installed = venv.resolve()
    for name, file in checks["files"].items():  # imported from the wheel, not from the checkout
        assert Path(file).resolve().is_relative_to(installed), (name, file)
    assert not any(Path(p).resolve() == ROOT for p in checks["sys_path"] if p)
    assert checks["version"] == re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert checks["licence"] and checks["facts_json"] and checks["ioi_data"] == [True, True]
    assert set(checks["relations"]) >= {"capital", "language"}  # the shipped facts are read as package data
    assert Path(checks["gguf"]).exists()  # the bundled-model loader finds SmolLM2's GGUF
    assert checks["scripts"] == {"circuits": "analyses.cli:main"} and (venv / "bin" / "circuits").exists()
    # the wheel's entry points, once: the test venv's editable install is on sys.path too, under the same name
    assert checks["registered"] == {
        "tasks": ["capitals", "factual_recall", "few_shot", "icl_regression", "induction", "prompts",
                  "regular_languages"],
        "engines": ["activation_patching", "cdt", "clamped_training", "edge_attribution", "path_patching"]}
    shown = ast.literal_eval(re.search(r'graph\.top\(3, by="signed"\)\s+# (\[.*\])', code).group(1))
    assert [name for name, _ in checks["top3"]] == [name for name, _ in shown]
    assert [score for _, score in checks["top3"]] == pytest.approx([score for _, score in shown], abs=5e-4)
    assert (work / "g.json").exists() and (work / "g.png").exists()
    assert set(checks["viewer_files"]) >= {"circuits/view/page.html", "circuits/view/viewer.js",
                                           "circuits/view/viewer.css", "circuits/view/curve.js",
                                           "circuits/view/vendor/cytoscape.min.js",
                                           "circuits/view/vendor/cytoscape.LICENSE"}
    assert checks["html_bytes"] == (work / "g.html").stat().st_size > 400_000  # Cytoscape.js (~440 kB) inlined
