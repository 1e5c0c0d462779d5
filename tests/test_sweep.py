"""`circuits sweep`: cells, keys, resume, retries and typed errors, on a real local Ray cluster
(``ray.init(num_cpus=2)``, once per test session) against the in-process ``local`` backend."""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import shutil
from pathlib import Path

import pytest

import circuits
from analyses import cli
from circuits.errors import InvalidOptionError, UnknownNameError
from circuits.graph import HeadGraph
from circuits.sweep import ModelSpec, Spec, status
from tests.sweep_tasks import lines

ROOT = Path(__file__).resolve().parents[1]
FAST_PATHS = {"name": "path_patching", "options": {"per_input": False}}
TINY = {"n_layers": 2, "n_heads": 2, "d_model": 16, "d_vocab": 64, "n_ctx": 64, "seed": 3}


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster with 2 CPUs for the whole test session (workers import this checkout)."""
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (make test installs it)")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()


def logged(task: str, log: Path) -> dict:
    return {"name": "tests.sweep_tasks:Logged", "options": {"inner": task, "log": str(log)}}


def two_by_two_by_two(log: Path) -> dict:
    """2 tasks (their trained default models) x 2 engines x 2 seeds, 8 prompts each: 8 fast cells."""
    return {"tasks": [logged("induction", log), logged("icl_regression", log)], "models": ["default"],
            "engines": ["activation_patching", FAST_PATHS], "seeds": [0, 1], "n": 8}


def graphs(out: Path) -> dict[str, HeadGraph]:
    return {p.parent.name: HeadGraph.from_json(p) for p in sorted(out.glob("*/graph.json"))}


# --- spec and keys (no Ray) -----------------------------------------------------------------------------
def test_cells_are_the_product_and_keys_follow_the_config(monkeypatch):
    spec = Spec.load({"tasks": ["induction", "icl_regression"], "models": ["default", {"name": "tiny", "toy": TINY}],
                      "engines": ["activation_patching", FAST_PATHS], "seeds": [0, 1, 2]})
    cells = spec.cells()
    assert len(cells) == 2 * 2 * 2 * 3 and len({c.key for c in cells}) == len(cells)
    assert len({c.folder for c in cells}) == len(cells)
    # spelling out a default option keeps the key; changing an option or the version changes it
    explicit = Spec.load({"tasks": ["induction"], "models": ["default"],
                          "engines": [{"name": "activation_patching", "options": {"direction": "denoising"}}]})
    plain = Spec.load({"tasks": ["induction"], "models": ["default"], "engines": ["activation_patching"]})
    noising = Spec.load({"tasks": ["induction"], "models": ["default"],
                         "engines": [{"name": "activation_patching", "options": {"direction": "noising"}}]})
    assert explicit.cells()[0].key == plain.cells()[0].key != noising.cells()[0].key
    # where a model runs is not part of the key: a sweep moved to a GPU node resumes
    on_gpu = Spec.load({"tasks": ["induction"], "models": [{"name": "default", "device": "cuda", "num_gpus": 1}],
                        "engines": ["activation_patching"]})
    assert on_gpu.cells()[0].key == plain.cells()[0].key
    before = plain.cells()[0].key
    monkeypatch.setattr(importlib.import_module("circuits.sweep"), "package_version", lambda: "99.0")
    assert plain.cells()[0].key != before
    # a default model belongs to its task (one actor each); a named model is shared by every task
    groups = {(c.task.name, c.model.name): c.group for c in cells}
    assert groups["induction", "default"] != groups["icl_regression", "default"]
    assert groups["induction", "tiny"] == groups["icl_regression", "tiny"]


@pytest.mark.parametrize("bad, error, words", [
    ({"tasks": ["nope"], "models": ["default"], "engines": ["cdt"]}, UnknownNameError, "nope"),
    ({"tasks": ["induction"], "models": ["default"], "engines": ["nope"]}, UnknownNameError, "activation_patching"),
    ({"tasks": ["induction"], "models": ["default"],
      "engines": [{"name": "cdt", "options": {"receivers": -1}}]}, InvalidOptionError, "receivers=-1"),
    ({"tasks": ["induction"], "models": ["default"], "engines": ["cdt"], "seed": [1]}, InvalidOptionError, "'seed'"),
    ({"tasks": ["induction"], "models": [{"name": "x", "toy": {"n_layer": 2}}], "engines": ["cdt"]},
     InvalidOptionError, "n_layer"),
    ({"tasks": ["induction"], "models": ["gpt2"], "engines": ["cdt"]}, InvalidOptionError, "hub="),
    ({"tasks": ["induction"], "models": ["default"], "engines": ["cdt"], "seeds": []}, InvalidOptionError, "seeds"),
])
def test_bad_specs_fail_before_any_run(bad, error, words, tmp_path):
    with pytest.raises(error, match=words):
        circuits.sweep(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hub_models_pass_their_placement_to_boot_transformers(monkeypatch):
    """Hub models cannot be downloaded here: this checks the config path only, down to the keyword names that
    TransformerLens's ``boot_transformers`` takes."""
    from transformer_lens.model_bridge import TransformerBridge

    model = ModelSpec(name="llama", hub="meta-llama/Llama-3.1-8B", n_devices=2, dtype="bfloat16", num_gpus=2)
    mapped = ModelSpec(name="llama", hub="meta-llama/Llama-3.1-8B", device_map="auto")
    calls = []
    monkeypatch.setattr("circuits.models.load", lambda name, **kwargs: calls.append((name, kwargs)))
    model.load(task=None)
    mapped.load(task=None)
    import torch
    assert calls == [("meta-llama/Llama-3.1-8B", {"n_devices": 2, "dtype": torch.bfloat16}),
                     ("meta-llama/Llama-3.1-8B", {"device_map": "auto"})]
    accepted = inspect.signature(TransformerBridge.boot_transformers).parameters
    assert {"n_devices", "device_map", "dtype", "device"} <= set(accepted)
    assert model.config() == mapped.config() | {"dtype": "bfloat16"}  # placement is not part of the key


def test_example_spec_and_dry_run(tmp_path, capsys):
    spec = Spec.load(ROOT / "sweeps" / "example.toml")
    assert len(spec.cells()) == len(spec.tasks) * len(spec.models) * len(spec.engines) * len(spec.seeds)
    assert cli.main(["sweep", str(ROOT / "sweeps" / "example.toml"), "--out", str(tmp_path), "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert f"{len(spec.cells())} cells" in table and table.count("pending") == len(spec.cells())
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


# --- a real local Ray cluster ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def swept(ray_cluster, tmp_path_factory):
    """The 8-cell sweep run by both backends, each counting its runs in its own log."""
    root = tmp_path_factory.mktemp("sweep")
    runs = {}
    for backend in ("local", "ray"):
        log = root / f"{backend}.log"
        report = circuits.sweep(two_by_two_by_two(log), root / backend, backend=backend, progress=False)
        runs[backend] = (report, log)
    return root, runs


def test_ray_gives_the_same_graphs_as_local(swept):
    root, runs = swept
    local, ray = graphs(root / "local"), graphs(root / "ray")
    assert len(local) == 8 and runs["local"][0].ok and runs["ray"][0].ok
    # the logs are task options, so the keys differ: line the cells up by what they ran
    ran = lambda found: {(g.meta["task"], g.meta["engine"], g.meta["seed"]): g for g in found.values()}  # noqa: E731
    assert len(ran(local)) == 8 and ran(local) == ran(ray)
    assert {g.meta["task"] for g in local.values()} == {"induction", "icl_regression"}
    meta = json.loads(next((root / "ray").glob("*/meta.json")).read_text())
    assert meta["backend"] == "ray" and meta["device"] == "cpu" and meta["seconds"] > 0
    assert meta["peak_rss_mb"] > 0 and meta["versions"]["ray"] and meta["versions"]["torch"]
    assert meta["pid"] != json.loads(next((root / "local").glob("*/meta.json")).read_text())["pid"]
    rows = list(csv.DictReader((root / "ray" / "results.csv").open()))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"done"}
    by_folder = {r["folder"]: r for r in rows}
    for folder, graph in ray.items():
        assert by_folder[folder]["top_heads"].split()[0].split("=")[0] == graph.top(1)[0][0]
        gap = graph.meta["metric_clean"] - graph.meta["metric_corrupted"]
        assert float(by_folder[folder]["metric_gap"]) == pytest.approx(gap, rel=1e-5)


def test_rerun_after_deleting_one_cell_recomputes_only_that_cell(swept):
    root, runs = swept
    report, log = runs["ray"]
    out = root / "ray"
    runs_per_cell = len(lines(log)) // 8
    assert runs_per_cell >= 1 and len(lines(log)) == 8 * runs_per_cell
    victim = next(p.parent for p in out.glob("*/graph.json")
                  if (HeadGraph.from_json(p).meta["task"], p.parent.name.split(".")[2:4]) == ("induction",
                                                                                         ["path_patching", "seed1"]))
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/meta.json") if p.parent != victim}
    before = HeadGraph.from_json(victim / "graph.json")
    shutil.rmtree(victim)
    spec = two_by_two_by_two(log)
    again = circuits.sweep(spec, out, backend="ray", progress=False)
    assert again.ok and len(again.ran) == 1 and len(again.skipped) == 7
    new_lines = lines(log)[8 * runs_per_cell:]
    assert len(new_lines) == runs_per_cell and all(line.startswith("induction seed1") for line in new_lines)
    assert HeadGraph.from_json(victim / "graph.json") == before
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the other cells were not rewritten
    nothing = circuits.sweep(spec, out, backend="ray", progress=False)
    assert nothing.ran == [] and len(lines(log)) == 9 * runs_per_cell


def test_dead_worker_is_retried_and_a_typed_error_is_recorded_once(ray_cluster, tmp_path, capsys):
    """One actor (a toy model shared by the cells). The first cell kills its process (``os._exit``): Ray
    restarts the actor and sends both cells again. The second cell's path patching asks for a position past
    the prompts' end, which only shows once the prompts exist: `InvalidOptionError`, recorded, never retried."""
    log, marker = tmp_path / "runs.log", tmp_path / "died"
    tiny = ", ".join(f"{k} = {v}" for k, v in TINY.items())
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(f"""
tasks = [{{ name = "tests.sweep_tasks:DiesOnce", options = {{ inner = "induction", log = "{log}", marker = "{marker}" }} }}]
n = 4
models = [{{ name = "tiny", toy = {{ {tiny} }} }}]
[[engines]]
name = "activation_patching"
[[engines]]
name = "path_patching"
options = {{ per_input = false, positions = [999] }}
""")
    out = tmp_path / "out"
    code = cli.main(["sweep", str(spec_path), "--out", str(out), "--backend", "ray", "--retries", "2"])
    captured = capsys.readouterr()
    assert code == 1
    spec = Spec.load(spec_path)
    done, failed = spec.cells()
    assert status(out, done) == "done" and status(out, failed) == "failed"
    assert json.loads((out / done.folder / "meta.json").read_text())["pid"] != int(marker.read_text())
    error = json.loads((out / failed.folder / "error.json").read_text())["error"]
    assert error["type"] == "InvalidOptionError" and error["deterministic"] and "999" in error["message"]
    assert failed.folder in captured.err and "InvalidOptionError" in captured.err
    assert len(lines(log)) == 2  # one batch per cell after the restart: the failing cell ran once
    # --retry-failed reruns only the failed cell (here in-process), which fails the same way
    code = cli.main(["sweep", str(spec_path), "--out", str(out), "--retry-failed"])
    assert code == 1 and len(lines(log)) == 3 and status(out, done) == "done"
