"""Tasks and engines as plugins (entry points), and a light start-up.

A plugin here is a real installed distribution, only a cheap one: a module plus a ``NAME-VERSION.dist-info`` folder
(METADATA, entry_points.txt) in a temporary folder on sys.path (in-process) or PYTHONPATH (subprocesses), which
`importlib.metadata` finds exactly as it finds what pip installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import circuits
import tasks
from analyses import cli
from circuits import Registry
from circuits.errors import DuplicateNameError, PluginImportError, UnknownNameError
from circuits.graph import HeadGraph
from circuits.sweeps import Spec

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_MODULE = "tl_circuits_echo_plugin"
PLUGIN_CODE = '''
"""A task and an engine from another distribution (tests/test_plugins.py)."""
from dataclasses import dataclass
from typing import ClassVar

import torch

from circuits import PromptBatch, models
from circuits.engines.activation_patching import ActivationPatching


@dataclass(frozen=True)
class EchoTask:
    """Random clean and corrupted prompts on a random one-layer toy; metric: logit(answer) - logit(foil)."""

    name: str = "plugin_echo"
    seq_len: int = 6

    def batch(self, model, n, seed):
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(model.cfg.d_vocab, (2, n, self.seq_len), generator=g)
        answers = torch.randint(model.cfg.d_vocab, (2, n), generator=g)
        return PromptBatch(clean=tokens[0], corrupted=tokens[1], answer=answers[0], foil=answers[1],
                           position=torch.full((n,), self.seq_len - 1))

    def metric(self, logits, batch):
        rows = torch.arange(len(logits))
        return logits[rows, batch.answer] - logits[rows, batch.foil]

    def default_model(self):
        return models.toy(n_layers=1, n_heads=2, d_model=16, d_vocab=16, n_ctx=8, seed=0)


@dataclass(frozen=True)
class EchoPatching(ActivationPatching):
    """Activation patching under a name of its own: an engine from another package."""

    name: ClassVar[str] = "plugin_patching"
'''
PLUGIN_ENTRY_POINTS = {"tl_circuits.tasks": {"plugin_echo": f"{PLUGIN_MODULE}:EchoTask"},
                       "tl_circuits.engines": {"plugin_patching": f"{PLUGIN_MODULE}:EchoPatching"}}


def install(site: Path, distribution: str, entry_points: dict[str, dict[str, str]],
            modules: dict[str, str] = None, version: str = "0.1") -> Path:
    """A distribution as pip leaves it in site-packages: its modules and a dist-info folder with entry points."""
    site.mkdir(parents=True, exist_ok=True)
    for module, code in (modules or {}).items():
        (site / f"{module}.py").write_text(code)
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items())
        for group, points in entry_points.items()))
    return site


@pytest.fixture
def plugin_site(tmp_path):
    return install(tmp_path / "site", "tl-circuits-echo-plugin", PLUGIN_ENTRY_POINTS, {PLUGIN_MODULE: PLUGIN_CODE})


@pytest.fixture
def on_path(monkeypatch):
    """Puts a folder on sys.path for one test; the plugin module is forgotten afterwards."""
    def put(site: Path) -> Path:
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.delitem(sys.modules, PLUGIN_MODULE, raising=False)
        return site
    yield put
    sys.modules.pop(PLUGIN_MODULE, None)


def run_python(code: str, pythonpath: Path = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


# --- plugins ---------------------------------------------------------------------------------------------
def test_the_cli_lists_a_plugins_task_and_engine_without_importing_it(plugin_site):
    code = f"""
import json, sys
from analyses import cli
for command in ("tasks", "engines"):
    print(command, json.dumps(cli.main([command]) or 0))
print("LOADED", json.dumps({{m: m in sys.modules for m in ("{PLUGIN_MODULE}", "torch", "transformer_lens")}}))
"""
    run = run_python(code, pythonpath=plugin_site)
    assert run.returncode == 0, run.stderr[-3000:]
    listed = run.stdout.split()
    assert {"plugin_echo", "induction", "plugin_patching", "activation_patching"} <= set(listed)
    loaded = json.loads(run.stdout.split("LOADED ", 1)[1])
    assert loaded == {PLUGIN_MODULE: False, "torch": False, "transformer_lens": False}  # names only, no imports


def test_a_plugins_task_and_engine_run_in_a_sweep(plugin_site, on_path, tmp_path):
    on_path(plugin_site)
    assert "plugin_echo" in tasks.names() and "plugin_patching" in circuits.engines.names()
    assert PLUGIN_MODULE not in sys.modules  # listing imported nothing
    assert "plugin_patching" in circuits.engines.for_trained_models()
    report = circuits.sweep({"tasks": ["plugin_echo"], "models": ["default"], "engines": ["plugin_patching"],
                             "seeds": [0, 1], "n": 4}, tmp_path / "out")
    assert len(report.ran) == 2 and not report.failed
    (graph_file, _) = sorted((tmp_path / "out").glob("*/graph.json"))
    graph = HeadGraph.from_json(graph_file)
    assert (graph.meta["engine"], graph.meta["task"]) == ("plugin_patching", "plugin_echo")
    assert len(graph.heads()) == 2 and all(score == score for score in graph.scores().values())
    # the same through discover, by name and with options
    task = tasks.get("plugin_echo", seq_len=5)
    direct = circuits.discover(task.default_model(), task, engine="plugin_patching", n=4, direction="noising")
    assert direct.meta["options"]["direction"] == "noising"


def test_register_adds_a_name_in_process_and_entry_points_stay_listed():
    registry: Registry = Registry("engine", "tl_circuits.engines")  # a fresh one: the library's stays as it is
    factory = circuits.engines.ActivationPatching
    assert registry.register("mine", factory) is factory
    assert "mine" in registry.names() and "cdt" in registry.names()
    assert registry.get("mine", direction="noising") == factory(direction="noising")
    assert "mine" not in circuits.engines.names()


def test_duplicate_names_are_refused_naming_both_sources(tmp_path, on_path):
    with pytest.raises(DuplicateNameError, match=r"'cdt'.*circuits\.engines\.cdt:CDT.*tl-circuits.*register\(\) of "
                                                 r"tests\.test_plugins:test_duplicate"):
        circuits.engines.register("cdt", test_duplicate_names_are_refused_naming_both_sources)
    registry: Registry = Registry("task")
    registry.register("twice", dict)
    with pytest.raises(DuplicateNameError, match=r"'twice'.*register\(\) of builtins:dict.*register\(\) of "
                                                 r"builtins:list"):
        registry.register("twice", list)
    # two distributions declaring one name: every look-up in that group refuses, naming both
    site = install(tmp_path / "site", "first-plugin", {"tl_circuits.tasks": {"echo": "first:Echo"}})
    install(site, "second-plugin", {"tl_circuits.tasks": {"echo": "second:Echo"}}, version="2.0")
    on_path(site)
    with pytest.raises(DuplicateNameError, match=r"'echo'(?=.*'first:Echo' of distribution first-plugin 0\.1)"
                                                 r"(?=.*'second:Echo' of distribution second-plugin 2\.0)"):
        tasks.names()
    assert "cdt" in circuits.engines.names()  # another group is not affected
    # a plugin taking a built-in name
    on_path(install(tmp_path / "other", "third-plugin", {"tl_circuits.engines": {"cdt": "third:Mine"}}))
    with pytest.raises(DuplicateNameError, match=r"engine 'cdt'(?=.*tl-circuits 0)(?=.*third-plugin 0\.1)"):
        circuits.engines.get("activation_patching")


def test_a_module_attribute_that_fails_to_import_shows_the_real_error(tmp_path, monkeypatch, on_path):
    with pytest.raises(PluginImportError, match=r"task 'no_such_module_xyz:Task'.*ModuleNotFoundError: No module "
                                                r"named 'no_such_module_xyz' \(is the package") as caught:
        tasks.get("no_such_module_xyz:Task")
    assert isinstance(caught.value.__cause__, ModuleNotFoundError) and isinstance(caught.value, ImportError)
    with pytest.raises(PluginImportError, match=r"AttributeError: module 'tests.sweep_tasks' has no attribute 'Nope'"):
        tasks.get("tests.sweep_tasks:Nope")
    # a plugin whose own import fails: its error, with no guess about the path
    site = install(tmp_path / "site", "broken-plugin", {"tl_circuits.engines": {"broken": "broken_plugin_xyz:Engine"}},
                   {"broken_plugin_xyz": "import missing_dependency_xyz\n"})
    on_path(site)
    with pytest.raises(PluginImportError, match=r"engine 'broken' from entry point 'broken_plugin_xyz:Engine' of "
                                                r"distribution broken-plugin 0\.1: ModuleNotFoundError: No module "
                                                r"named 'missing_dependency_xyz'$"):
        circuits.engines.get("broken")
    # a sweep spec says the same (it used to say "unknown task or engine")
    with pytest.raises(PluginImportError, match="No module named 'no_such_module_xyz'"):
        Spec.load({"tasks": ["no_such_module_xyz:Task"], "models": ["default"], "engines": ["cdt"]})
    # a module in the working directory, which the `circuits` command does not put on sys.path
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_tasks_xyz.py").write_text("class Task: ...\n")
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".") and Path(p).resolve() != work])
    with pytest.raises(PluginImportError, match=r"'my_tasks_xyz' is in the working directory .*not on sys.path.*"
                                                r"PYTHONPATH=\."):
        tasks.get("my_tasks_xyz:Task")


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match=r"unknown task 'nope'; expected one of: capitals, .*induction"):
        tasks.get("nope")
    with pytest.raises(UnknownNameError, match=r"unknown engine 'nope'.*no installed distribution declares entry "
                                               r"points in the group 'tl_circuits.nothing'"):
        Registry("engine", "tl_circuits.nothing").get("nope")


def test_the_cli_shows_a_plugins_import_error(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text('tasks = ["no_such_module_xyz:Task"]\nmodels = ["default"]\nengines = ["cdt"]\n')
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "circuits: error: cannot load task 'no_such_module_xyz:Task'" in capsys.readouterr().err


# --- the library never imports the tasks package; start-up is light --------------------------------------
def test_the_library_never_imports_the_tasks_package():
    pattern = re.compile(r"import tasks|import_module\(.tasks.\)")
    offending = [f"{path.relative_to(ROOT)}:{number}" for path in sorted((ROOT / "circuits").rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offending


def test_the_lazy_packages_export_what_they_list():
    for package in (circuits, circuits.engines, tasks):
        assert set(package.__all__) <= set(dir(package))
        assert all(getattr(package, name) is not None for name in package.__all__)
    from circuits.engines import CDT
    from tasks import Induction
    assert CDT is circuits.engines.get("cdt").__class__ and isinstance(tasks.get("induction"), Induction)
    with pytest.raises(AttributeError, match="module 'circuits' has no attribute 'nope'"):
        circuits.nope


START_UP = """
import json, sys
from analyses import cli
codes = {}
for argv in (["--help"], ["tasks"], ["engines"], ["discover", "--task", "induction", "--n", "0"],
             ["discover", "--help"], ["compare", "--help"], ["sweep", "spec.toml", "--out", "o", "--retries", "-1"]):
    try:
        codes[" ".join(argv)] = cli.main(argv)
    except SystemExit as exit:
        codes[" ".join(argv)] = exit.code
heavy = ("torch", "transformer_lens", "transformers", "matplotlib", "networkx", "ray")
print("RESULT", json.dumps({"codes": codes, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_help_listing_and_argument_errors_load_no_torch():
    run = run_python(START_UP)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["loaded"] == []
    assert result["codes"] == {"--help": 0, "tasks": 0, "engines": 0, "discover --task induction --n 0": 2,
                               "discover --help": 0, "compare --help": 0,
                               "sweep spec.toml --out o --retries -1": 2}
    assert "argument --n: 0 is too small; expected an integer >= 1" in run.stderr
    assert "argument --retries: -1 is too small; expected an integer >= 0" in run.stderr
    assert "one of: activation_patching, cdt" in run.stdout  # help texts name the registered engines


def test_import_circuits_is_light_and_discover_loads_no_drawing_or_ray():
    code = """
import json, sys
import circuits, tasks, circuits.engines
light = [m for m in ("torch", "transformer_lens") if m in sys.modules]
circuits.discover, circuits.HeadGraph, tasks.get("induction"), circuits.engines.get("activation_patching")
print("RESULT", json.dumps({"light": light, "run": [m for m in ("matplotlib", "ray") if m in sys.modules],
                            "torch": "torch" in sys.modules}))
"""
    run = run_python(code)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.split("RESULT ", 1)[1]) == {"light": [], "run": [], "torch": True}
