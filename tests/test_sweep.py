"""`circuits sweep`: cells, keys, resume, retries and typed errors, on a real local Ray cluster
(``ray.init(num_cpus=2)``, in one test) against the in-process ``local`` backend."""

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
from circuits.sweeps import ModelSpec, Spec
from tests.sweep_tasks import lines

ROOT = Path(__file__).resolve().parents[1]
FAST_PATHS = {"name": "path_patching", "options": {"per_input": False}}
TINY = {"n_layers": 2, "n_heads": 2, "d_model": 16, "d_vocab": 64, "n_ctx": 64, "seed": 3}


def logged(task: str, log: Path, dies_once: Path = None) -> dict:
    """A task run through `tests.sweep_tasks` (counted in `log`; killing its process once with `dies_once`)."""
    if dies_once is None:
        return {"name": "tests.sweep_tasks:Logged", "options": {"inner": task, "log": str(log)}}
    return {"name": "tests.sweep_tasks:DiesOnce", "options": {"inner": task, "log": str(log),
                                                              "marker": str(dies_once)}}


# path patching at a position past the prompts' end: a typed error that only shows once the prompts exist
BAD_POSITIONS = {"name": "path_patching", "label": "bad", "options": {"per_input": False, "positions": [999]}}


def spec_2x2x2(log: Path, dies_once: Path = None) -> dict:
    """2 tasks (their trained default models) x 2 engines x 2 seeds, 8 prompts each: 8 fast cells; plus the
    4 cells of an engine option that fails at run time."""
    return {"tasks": [logged("induction", log, dies_once), logged("icl_regression", log)], "models": ["default"],
            "engines": ["activation_patching", FAST_PATHS, BAD_POSITIONS], "seeds": [0, 1], "n": 8}


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
    monkeypatch.setattr(importlib.import_module("circuits.sweeps.spec"), "package_version", lambda: "99.0")
    assert plain.cells()[0].key != before
    # a default model belongs to its task (one actor each); a named model is shared by every task
    groups = {(c.task.name, c.model.name): c.group for c in cells}
    assert groups["induction", "default"] != groups["icl_regression", "default"]
    assert groups["induction", "tiny"] == groups["icl_regression", "tiny"]


def test_replicas_share_a_models_cells_round_robin():
    from circuits.sweeps.ray_backend import replicated

    spec = Spec.load({"tasks": ["induction", "icl_regression"], "engines": ["activation_patching", FAST_PATHS],
                      "models": [{"name": "tiny", "toy": TINY, "replicas": 3}], "seeds": [0, 1]})
    cells = spec.cells()
    split = replicated({cells[0].group: cells})
    assert sorted(map(len, split.values())) == [2, 3, 3]
    assert sorted(c.key for part in split.values() for c in part) == sorted(c.key for c in cells)
    single = Spec.load({"tasks": ["induction", "icl_regression"], "engines": ["activation_patching", FAST_PATHS],
                        "models": [{"name": "tiny", "toy": TINY}], "seeds": [0, 1]})
    assert [c.key for c in single.cells()] == [c.key for c in cells]  # replicas are not part of the key


@pytest.mark.parametrize("bad, error, words", [
    ({"tasks": ["nope"], "models": ["default"], "engines": ["cdt"]}, UnknownNameError, "nope"),
    ({"tasks": ["induction"], "models": ["default"], "engines": ["nope"]}, UnknownNameError, "activation_patching"),
    ({"tasks": ["induction"], "models": ["default"],
      "engines": [{"name": "cdt", "options": {"receiver_count": -1}}]}, InvalidOptionError, "receiver_count=-1"),
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
    mapped = ModelSpec(name="llama", hub="meta-llama/Llama-3.1-8B", device_map="auto", offload_folder="/scratch/off")
    calls = []
    monkeypatch.setattr("circuits.models.load", lambda name, **kwargs: calls.append((name, kwargs)))
    model.load(task=None)
    mapped.load(task=None)
    import torch
    assert calls == [("meta-llama/Llama-3.1-8B", {"n_devices": 2, "dtype": torch.bfloat16}),
                     ("meta-llama/Llama-3.1-8B", {"device_map": "auto", "offload_folder": "/scratch/off"})]
    accepted = inspect.signature(TransformerBridge.boot_transformers).parameters
    assert {"n_devices", "device_map", "offload_folder", "dtype", "device"} <= set(accepted)
    assert model.config() == mapped.config() | {"dtype": "bfloat16"}  # placement is not part of the key


def test_example_spec_and_dry_run(tmp_path, capsys):
    spec = Spec.load(ROOT / "sweeps" / "example.toml")
    assert len(spec.cells()) == len(spec.tasks) * len(spec.models) * len(spec.engines) * len(spec.seeds)
    assert cli.main(["sweep", str(ROOT / "sweeps" / "example.toml"), "--out", str(tmp_path), "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert f"{len(spec.cells())} cells" in table and table.count("pending") == len(spec.cells())
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


# --- a real local Ray cluster ---------------------------------------------------------------------------
def test_on_a_local_ray_cluster(tmp_path_factory, capsys):
    """Against a real local Ray cluster (``ray.init(num_cpus=2)``): the same graphs as the local backend, a
    dead worker restarted and its cells retried, typed errors recorded once, a rerun that recomputes only a
    deleted cell and exits non-zero on failed cells, and a worker that dies with no retries left.
    One test, so that one cluster starts: under pytest 9 here, pytest-xdist's ``xdist_group`` does not keep
    tests on one worker, and each worker would start its own cluster."""
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (make test installs it)")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        root = tmp_path_factory.mktemp("sweep")
        reports = sweep_both(root)
        check_ray_gives_the_same_graphs_as_local(root, reports)
        check_a_worker_that_dies_is_restarted_and_its_cells_retried(root, reports)
        check_typed_errors_are_recorded_once_not_retried(root, reports)
        check_rerun_recomputes_only_a_deleted_cell_and_exits_non_zero_on_failed_cells(root, reports, capsys)
        check_a_worker_that_dies_on_every_allowed_attempt_fails_its_cell(tmp_path_factory.mktemp("no_retries"))
    finally:
        ray.shutdown()


def sweep_both(root: Path) -> dict:
    """The same sweep run by both backends, each counting its runs in its own log. Under Ray the induction
    cells run on a task that kills its worker process the first time it is asked for prompts."""
    reports = {}
    for backend in ("local", "ray"):
        dies_once = root / "died" if backend == "ray" else None
        reports[backend] = circuits.sweep(spec_2x2x2(root / f"{backend}.log", dies_once), root / backend,
                                          backend=backend, retries=2, progress=False)
    return reports


def by_run(out: Path) -> dict[tuple, HeadGraph]:
    """Graphs keyed by what they ran (the logs are task options, so folder keys differ between backends)."""
    return {(g.meta["task"], g.meta["engine"], g.meta["seed"]): g for g in graphs(out).values()}


def check_ray_gives_the_same_graphs_as_local(root, reports):
    local, ray = by_run(root / "local"), by_run(root / "ray")
    assert len(local) == 8 and local == ray
    assert {task for task, _, _ in local} == {"induction", "icl_regression"}
    meta = json.loads(next((root / "ray").glob("*/meta.json")).read_text())
    assert meta["backend"] == "ray" and meta["device"] == "cpu" and meta["seconds"] > 0
    assert meta["peak_rss_mb"] > 0 and meta["versions"]["ray"] and meta["versions"]["torch"]
    assert meta["pid"] != json.loads(next((root / "local").glob("*/meta.json")).read_text())["pid"]
    rows = list(csv.DictReader((root / "ray" / "results.csv").open()))
    assert len(rows) == 12 and sorted(r["status"] for r in rows) == ["done"] * 8 + ["failed"] * 4
    for row in rows:
        if row["status"] == "done":
            graph = HeadGraph.from_json(root / "ray" / row["folder"] / "graph.json")
            assert row["top_heads"].split()[0].split("=")[0] == graph.top(1, by="signed")[0][0]
            gap = graph.meta["metric_clean"] - graph.meta["metric_corrupted"]
            assert float(row["metric_gap"]) == pytest.approx(gap, rel=1e-5)


def check_a_worker_that_dies_is_restarted_and_its_cells_retried(root, reports):
    dead_pid = int((root / "died").read_text())
    records = [json.loads(p.read_text()) for p in (root / "ray").glob("*/*.json") if p.name != "graph.json"]
    induction = [r for r in records if r["cell"]["task"]["options"]["inner"] == "induction"]
    assert len(induction) == 6 and dead_pid not in {r["pid"] for r in induction}  # 4 done, 2 failed (bad positions)
    assert len({r["pid"] for r in induction}) == 1  # the restarted actor ran them all, the model loaded once
    assert sum(r["load_seconds"] > 0 for r in induction) == 1


def check_typed_errors_are_recorded_once_not_retried(root, reports):
    """Each cell asks for its prompts as often per run (twice: its fingerprint, then the engine's run), so equal
    logs mean no cell ran twice: not the cells that raised `InvalidOptionError` (recorded in error.json), not the
    cells of the restarted actor."""
    local_log, ray_log = lines(root / "local.log"), lines(root / "ray.log")
    assert len(ray_log) == len(local_log) and len(local_log) % 12 == 0 and local_log
    for backend in ("local", "ray"):
        failed = reports[backend].failed
        assert len(failed) == 4 and all(".bad." in folder for folder in failed)
        for folder, error in failed.items():
            on_disk = json.loads((root / backend / folder / "error.json").read_text())["error"]
            assert on_disk == error and error["type"] == "InvalidOptionError" and error["deterministic"]
            assert "999" in error["message"] and not (root / backend / folder / "graph.json").exists()


def check_rerun_recomputes_only_a_deleted_cell_and_exits_non_zero_on_failed_cells(root, reports, capsys):
    out, log = root / "ray", root / "ray.log"
    spec_path = root / "ray.toml"
    spec_path.write_text(toml(spec_2x2x2(log, root / "died")))
    runs_per_cell = len(lines(log)) // 12
    victim = next(p.parent for p in out.glob("*/graph.json") if ".path_patching.seed1." in p.parent.name
                  and HeadGraph.from_json(p).meta["task"] == "induction")
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/*.json") if p.parent != victim}
    before = HeadGraph.from_json(victim / "graph.json")
    shutil.rmtree(victim)
    code = cli.main(["sweep", str(spec_path), "--out", str(out), "--backend", "ray"])
    err = capsys.readouterr().err
    # the deleted cell ran again (fingerprint, then the engine's run: a batch each); each other done cell asked for
    # its prompts once, to check them against its fingerprint, and was not rewritten; failed cells were left alone
    new_lines = lines(log)[12 * runs_per_cell:]
    done_cells = sum(1 for p in out.glob("*/meta.json")) - 1
    assert runs_per_cell == 2 and len(new_lines) == runs_per_cell + done_cells == 9
    assert sum(line.startswith("induction seed1") for line in new_lines) == runs_per_cell + 1  # + its twin engine
    assert HeadGraph.from_json(victim / "graph.json") == before
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # no other cell was rewritten
    # the failed cells were left alone but still fail the run, named in a table
    assert code == 1 and "4 failed cells" in err and all(folder in err for folder in reports["ray"].failed)
    # --retry-failed reruns only them (here in-process); they fail the same way
    code = cli.main(["sweep", str(spec_path), "--out", str(out), "--retry-failed"])
    assert code == 1 and len(lines(log)) == 17 * runs_per_cell + done_cells
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/meta.json") if p.parent != victim} == {
        p: t for p, t in kept.items() if p.name == "meta.json"}


def toml(spec: dict) -> str:
    """A spec dict as TOML (inline tables; enough for these specs)."""
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "true" if v is True else "false" if v is False else json.dumps(v)
    return "\n".join(f"{k} = {value(v)}" for k, v in spec.items()) + "\n"


def check_a_worker_that_dies_on_every_allowed_attempt_fails_its_cell(tmp_path):
    """With no retries allowed, the cell whose worker died is recorded as failed (not deterministic);
    ``retry_failed`` then reruns it, and the task (which dies only once) gives its graph."""
    log, marker = tmp_path / "runs.log", tmp_path / "died"
    spec = {"tasks": [logged("induction", log, dies_once=marker)], "models": [{"name": "tiny", "toy": TINY}],
            "engines": ["activation_patching"], "n": 4}
    report = circuits.sweep(spec, tmp_path / "out", backend="ray", retries=0, progress=False)
    [(folder, error)] = report.failed.items()
    assert "died" in error["message"] and not error["deterministic"] and marker.exists() and not lines(log)
    again = circuits.sweep(spec, tmp_path / "out", backend="local", retry_failed=True, progress=False)
    assert again.ok and again.ran == [report.cells[0].key] and len(lines(log)) >= 1
    assert not (tmp_path / "out" / folder / "error.json").exists()
    assert (tmp_path / "out" / folder / "graph.json").exists()
