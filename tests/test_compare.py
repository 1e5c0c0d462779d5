"""`circuits.compare`: rank agreement on hand examples, the batched mean ablation against a literal loop of
full forward passes with TransformerLens hooks, hand-computed trapezoid areas, typed errors, and what the
engines find on the default induction model (and, slow, on SmolLM2)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import circuits
from circuits import PromptBatch, hooks, models
from circuits.comparison.faithfulness import MeanAblation, circuit_sizes, cmd, cpr, masks, trapezoid
from circuits.comparison import jaccard, ranked_heads, spearman
from circuits.errors import InvalidOptionError, MismatchedGraphsError, UnknownNameError
from circuits.graph import HeadGraph

from circuits.comparison.edges import is_edge_graph

ENGINE_OPTIONS = {"cdt": {"receiver_count": 0}}  # as analyses.compare: path patching scores every edge


# --- rank agreement on hand examples --------------------------------------------------------------------------
def test_spearman_on_hand_examples():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties share their mean rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3) give r = 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1], [2]))
    with pytest.raises(InvalidOptionError, match="same length"):
        spearman([1, 2], [1, 2, 3])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=3, max_size=12))
def test_spearman_is_pearson_of_brute_force_ranks(pairs):
    """Against ranks counted by brute force: rank(v) = #smaller + (#equal - 1) / 2."""
    a, b = (np.array(column, dtype=float) for column in zip(*pairs))

    def brute(v):
        return np.array([(v < x).sum() + ((v == x).sum() - 1) / 2 for x in v])

    ra, rb = brute(a), brute(b)
    expected = float("nan") if ra.std() == 0 or rb.std() == 0 else float(np.corrcoef(ra, rb)[0, 1])
    assert spearman(a, b) == pytest.approx(expected, nan_ok=True)


def test_jaccard_on_hand_examples():
    assert jaccard({"a", "b", "c"}, {"b", "c", "d"}) == 0.5
    assert jaccard(["L0H0"], ["L1H1"]) == 0.0 and jaccard([], []) == 1.0


def test_heads_are_ranked_by_absolute_score_unscored_last():
    graph = HeadGraph(n_layers=2, n_heads=2, meta={})
    graph.add_node("L0H0", 0.1)
    graph.add_node("L0H1", -0.5)
    graph.add_node("L1H1", 0.3)
    graph.add_node("L1H0", float("nan"))  # NaN counts as unscored; the model's missing heads too
    assert ranked_heads(graph) == ["L0H1", "L1H1", "L0H0", "L1H0"]


# --- areas ------------------------------------------------------------------------------------------------------
def test_areas_by_hand():
    fraction, faithfulness = [0.0, 0.25, 1.0], [0.0, 0.5, 1.0]
    # Trapezoids: 0.25 * (0 + 0.5) / 2 + 0.75 * (0.5 + 1) / 2 = 0.0625 + 0.5625.
    assert cpr(fraction, faithfulness) == pytest.approx(0.625)
    # |1 - f| = (1, 0.5, 0): 0.25 * 1.5 / 2 + 0.75 * 0.5 / 2 = 0.1875 + 0.1875.
    assert cmd(fraction, faithfulness) == pytest.approx(0.375)
    # Above 1 counts against CMD too: f = (0, 1.5, 1) -> |1 - f| = (1, 0.5, 0), the same area.
    assert cmd(fraction, [0.0, 1.5, 1.0]) == pytest.approx(0.375)
    assert trapezoid([0, 1, 3], [2, 2, 2]) == pytest.approx(6.0)


def test_circuit_sizes():
    assert circuit_sizes(8) == list(range(9))
    assert circuit_sizes(270) == [0, 1, 3, 5, 14, 27, 54, 135, 270]  # MIB's 0.1% .. 100%, at least one head
    assert circuit_sizes(10, [3]) == [0, 3, 10]
    with pytest.raises(InvalidOptionError, match=r"sizes \[11\]"):
        circuit_sizes(10, [11])


# --- the batched ablation against a literal loop ----------------------------------------------------------------
@dataclass(frozen=True)
class VariablePositions:
    """Random prompts read out at varying positions (so the per-position reference mean leaves some out)."""

    name: str = "variable_positions"
    seq_len: int = 10

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(model.cfg.d_vocab, (2, n, self.seq_len), generator=g)
        answers = torch.randint(model.cfg.d_vocab, (2, n), generator=g)
        position = torch.randint(3, self.seq_len, (n,), generator=g)
        return PromptBatch(clean=tokens[0], corrupted=tokens[1], answer=answers[0], foil=answers[1], position=position)

    def metric(self, logits, batch):
        rows = torch.arange(len(logits))
        return logits[rows, batch.answer] - logits[rows, batch.foil]

    def default_model(self):
        raise NotImplementedError


def literal_mean_ablation(model, task, batch, reference, keep):
    """One circuit at a time, full ``model(tokens)`` runs with TransformerLens hooks at every ``hook_z``; the
    reference mean at position p averages the reference prompts whose read-out is at p or later (a loop), or
    every such (prompt, position) where none reaches p."""
    cfg = model.cfg
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    cache = {}
    with torch.no_grad(), hooks.attached(model, [(n, lambda t, hook, n=n: cache.__setitem__(n, t.clone()))
                                                 for n in names]):
        model(reference.clean)
    means = {}
    for name in names:
        z = cache[name]
        valid = [(i, p) for i in range(reference.size) for p in range(z.shape[1]) if p <= reference.position[i]]
        overall = torch.stack([z[i, p] for i, p in valid]).mean(0)
        rows = []
        for p in range(max(batch.clean.shape[1], z.shape[1])):
            here = [z[i, p] for i in range(reference.size) if p <= reference.position[i]]
            rows.append(torch.stack(here).mean(0) if here else overall)
        means[name] = torch.stack(rows)
    out = []
    for circuit in keep:
        def ablate(z, hook, layer):
            z = z.clone()
            for h in range(cfg.n_heads):
                if not circuit[layer, h]:
                    z[:, :, h] = means[names[layer]][: z.shape[1], h]
            return z

        fwd = [(name, lambda z, hook, layer=layer: ablate(z, hook, layer)) for layer, name in enumerate(names)]
        with torch.no_grad(), hooks.attached(model, fwd):
            logits = model(batch.clean)
        rows = torch.arange(batch.size)
        out.append(task.metric(logits[rows, batch.position], batch).mean().item())
    return torch.tensor(out)


@pytest.mark.parametrize("config", [dict(attn_only=True), dict(attn_only=False, d_mlp=24, normalization="RMS",
                                                               positional="rotary")])
def test_batched_ablation_matches_a_literal_hook_loop(config):
    torch.manual_seed(0)
    model = models.toy(n_layers=3, n_heads=3, d_model=18, d_vocab=40, n_ctx=16, seed=5, **config)
    model.eval()
    task = VariablePositions()
    batch, reference = task.batch(model, 6, seed=0), task.batch(model, 5, seed=1)
    keep = torch.rand(7, 3, 3, generator=torch.Generator().manual_seed(2)) < 0.5
    keep[0] = True  # the whole model
    keep[1] = False  # the empty circuit
    keep[2] = True
    keep[2, 2, 1] = False  # ablating only in the last layer: the run restarts there
    with torch.no_grad():
        ablation = MeanAblation.prepare(model, task, batch, reference)
        got = ablation.metrics(keep)
    expected = literal_mean_ablation(model, task, batch, reference, keep)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got, expected)
    assert got[0] == pytest.approx(ablation.full)
    # A small memory budget splits the copies over several passes: same numbers.
    ablation.memory_mb = 1e-3
    assert torch.allclose(ablation.metrics(keep), got, atol=1e-5)


def test_masks_and_shapes():
    keep = masks([["L0H1"], ["L1H0", "L0H0"]], 2, 2)
    assert keep.tolist() == [[[False, True], [False, False]], [[True, False], [True, False]]]


# --- typed errors -----------------------------------------------------------------------------------------------
def small_graph(engine="activation_patching", task="induction", model="induction", n_layers=2, n_heads=4):
    graph = HeadGraph(n_layers=n_layers, n_heads=n_heads, meta=dict(engine=engine, task=task, model=model))
    graph.add_node("L1H0", 1.0)
    return graph


def test_which_graphs_are_judged_by_edges():
    """A graph is an edge graph when it scores direct effects into a head's q, k or v input; head -> read-out edges
    alone, or edges measuring shares or total effects, leave it to head circuits."""
    to_logits = small_graph("path_patching")
    to_logits.add_edge("L1H0", "logits", 0.5, effect="direct")
    assert not is_edge_graph(to_logits)
    shares = small_graph("cdt")
    shares.add_edge("L0H1", "L1H0", 0.3, effect="share")
    assert not is_edge_graph(shares)
    into_key = small_graph("path_patching")
    into_key.add_edge("L1H0", "logits", 0.5, effect="direct")
    into_key.add_edge("L0H3", "L1H0", 0.4, effect="direct", inputs="k")
    assert is_edge_graph(into_key)


def test_typed_errors_name_the_value(induction, induction_model):
    with pytest.raises(InvalidOptionError, match=r"graphs=\[\]"):
        circuits.compare([], induction_model, induction)
    with pytest.raises(MismatchedGraphsError, match="'capitals'.*expected 'induction'"):
        circuits.compare([small_graph(), small_graph("cdt", task="capitals")], induction_model, induction)
    with pytest.raises(MismatchedGraphsError, match="3 layers x 4 heads; expected 'induction' with 2 x 4"):
        circuits.compare([small_graph(n_layers=3)], induction_model, induction)
    with pytest.raises(MismatchedGraphsError, match="'gpt2'"):
        circuits.compare([small_graph(model="gpt2")], induction_model, induction)
    with pytest.raises(UnknownNameError, match="'optogenetics'; expected one of: activation_patching"):
        circuits.compare([small_graph("optogenetics")], induction_model, induction)
    with pytest.raises(InvalidOptionError, match="is a str; expected a HeadGraph"):
        circuits.compare(["activation_patching"], induction_model, induction)
    for bad, message in ((dict(k=0), r"k=0; expected a number of heads in \[1, 8\]"), (dict(k=9), "k=9"),
                         (dict(draws=0), "draws=0"), (dict(sizes=[-1]), r"sizes \[-1\]"),
                         (dict(edge_ablation="resample"), "'resample'; expected one")):
        with pytest.raises(InvalidOptionError, match=message):
            circuits.compare([small_graph()], induction_model, induction, **bad)


# --- the engines on the default induction model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def induction_comparison(induction, induction_model):
    graphs = [circuits.discover(induction_model, induction, engine=name, n=32, seed=0, **ENGINE_OPTIONS.get(name, {}))
              for name in circuits.engines.for_trained_models()]
    return circuits.compare(graphs, induction_model, induction, n=32, draws=10)


def test_every_engine_finds_the_same_top_layer1_head(induction_comparison):
    tops = {name: next(h for h in heads if h.startswith("L1")) for name, heads in induction_comparison.top.items()}
    assert set(tops) == set(circuits.engines.for_trained_models()) >= {"activation_patching", "cdt"}
    assert len(set(tops.values())) == 1, tops


def test_induction_faithfulness(induction_comparison, induction, induction_model):
    result = induction_comparison
    # Activation patching ranks the previous-token head (|score| ~0.8) first: its top-2 circuit and its curve
    # beat random circuits of the same sizes.
    patching = result.curves["activation_patching"]
    assert patching.at(2) >= max(result.random_draws[2]) and patching.at(2) > result.random.at(2) + 0.2
    assert patching.cpr > result.random.cpr + 0.1
    # Path patching and CD-T score a head by what reaches the logits; the previous-token head's effect goes through
    # the layer-1 heads' keys, so it ranks last and their circuits stay near 0 until it joins (not better than
    # random): the induction heads without it carry nothing under mean ablation, with it nearly everything.
    previous_token = result.top["activation_patching"][0]
    for name in ("path_patching", "cdt"):
        assert result.top[name][-4:].count(previous_token) == 1
        assert result.curves[name].cpr < result.random.cpr
    layer1 = [h for h in result.top["activation_patching"] if h.startswith("L1")]
    with torch.no_grad():
        batch = circuits.engines.base.prompts(induction_model, induction, 32, 1)
        ablation = MeanAblation.prepare(induction_model, induction, batch,
                                        circuits.engines.base.prompts(induction_model, induction, 32, 2))
        empty, without, with_it = ablation.metrics(masks([[], layer1, layer1 + [previous_token]], 2, 4)).tolist()
    gap = ablation.full - empty
    assert (without - empty) / gap < 0.1 and (with_it - empty) / gap > 0.8
    table = result.table()
    assert "| activation_patching | heads |" in table and "| edge_attribution | edges |" in table and "Spearman" in table


def test_induction_edge_circuits(induction_comparison):
    """Engines that score q/k/v edges are judged by MIB edge circuits against random edge circuits: edge attribution's
    beat them on CPR and CMD; f is 0 for the empty circuit and 1 for every edge."""
    result = induction_comparison
    assert result.kinds == {"activation_patching": "heads", "cdt": "heads", "edge_attribution": "edges",
                            "path_patching": "edges"}
    edges = result.edges
    assert edges.random.signed[0] == 0.0 and edges.random.signed[-1] == pytest.approx(1.0, abs=1e-6)
    eap = edges.curves["edge_attribution"]
    assert eap.cpr > edges.random.cpr + 0.03 and eap.cmd < edges.random.cmd - 0.2
    rows = {row["engine"]: row for row in result.rows()}
    assert rows["edge_attribution"]["cpr"] == eap.cpr and rows["random_edges"]["kind"] == "edges"
    assert rows["activation_patching"]["cpr"] == result.curves["activation_patching"].cpr


def test_draw_and_rows(induction_comparison, tmp_path):
    induction_comparison.draw(tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    rows = induction_comparison.rows()
    assert [r["engine"] for r in rows] == [*induction_comparison.engines, "random", "random_edges"]


# --- SmolLM2 (slow) -------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("task_name, n", [("factual_recall", 4), ("capitals", 2)])  # capitals' prompts are long
def test_smollm2_top_heads_beat_random(bundled_model, task_name, n):
    """Edge attribution's top heads (EAP, the engine fast enough for a test on SmolLM2) against random circuits
    of the same size, on the coarse curve 0, 14, 270 heads; the analysis compares all four engines (docs/compare.md)."""
    from tasks import capitals, facts, factual_recall

    # One template each: the known-facts filter runs on fewer prompts (it dominates the time otherwise).
    task = (factual_recall.FactualRecall(templates=facts.TEMPLATES["capital"][:1]) if task_name == "factual_recall"
            else capitals.Capitals(templates=capitals.CONTEXT_TEMPLATES[:1]))
    graph = circuits.discover(bundled_model, task, engine="edge_attribution", method="eap", n=n, seed=0)
    result = circuits.compare([graph], bundled_model, task, n=4, sizes=[14], draws=3, k=14, edges=False)
    curve = result.curves["edge_attribution"]
    assert curve.at(14) > max(result.random_draws[1]) + 0.2 and curve.cpr > result.random.cpr
    if task_name == "factual_recall":  # on capitals the top heads overshoot (f ~ 2; docs/compare.md): CMD is not
        assert curve.cmd < result.random.cmd  # asserted there


# --- the analysis, the CLI and `make figures` -------------------------------------------------------------------
def test_cli_compare_writes_one_png_per_task_and_one_table(tmp_path, capsys):
    from analyses import cli

    engines = ["activation_patching", "cdt"]
    argv = ["compare", "--task", "icl_regression", "--quick", "--out", str(tmp_path)]
    assert cli.main(argv + [arg for engine in engines for arg in ("--engine", engine)]) == 0
    assert (tmp_path / "compare_icl_regression.png").stat().st_size > 10_000
    lines = (tmp_path / "compare.csv").read_text().splitlines()
    assert lines[0].startswith("task,model,engine,cpr,cmd") and len(lines) == 1 + len(engines) + 1
    assert "| icl_regression | random |" in (tmp_path / "compare.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["headline"]) == {f"icl_regression/{e}" for e in [*engines, "random"]}
    assert cli.main(["compare", "--task", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_every_figure_script_takes_quick_and_out(capsys):
    import importlib

    from analyses import figures

    for script in figures.SCRIPTS:
        with pytest.raises(SystemExit) as exit_:
            importlib.import_module(script).main(["--help"])
        assert exit_.value.code == 0
        usage = capsys.readouterr().out
        assert "--quick" in usage and "--out" in usage, script


FAKE_SCRIPT = '''
import argparse, json, sys
from pathlib import Path
parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--out", type=Path)
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
(args.out / "a.png").write_bytes(b"png")
(args.out / "sub").mkdir(exist_ok=True)
(args.out / "sub" / "b.png").write_bytes(b"png")
summary = {"headline": {"quick": args.quick}} if "{name}" == "with_headline" else {"x": 1.5, "nested": {"y": 2, "s": "no"}, "deep": {"a": {"b": 3}}}
(args.out / "summary.json").write_text(json.dumps(summary))
sys.exit(3 if "{name}" == "failing" else 0)
'''


def test_manifest_lists_every_figure_with_its_script_config_seconds_and_headline(tmp_path):
    from analyses import figures

    for name in ("with_headline", "numbers_only", "failing"):
        (tmp_path / f"{name}.py").write_text(FAKE_SCRIPT.replace("{name}", name))
    env = {"PYTHONPATH": str(tmp_path)}
    manifest = figures.build(["with_headline", "numbers_only", "failing"], quick=True, out=tmp_path / "figs", env=env)
    assert json.loads((tmp_path / "figs" / "manifest.json").read_text()) == manifest
    by_figure = {Path(f["figure"]).relative_to(tmp_path / "figs").as_posix(): f for f in manifest["figures"]}
    assert set(by_figure) == {"with_headline/a.png", "with_headline/sub/b.png", "numbers_only/a.png",
                              "numbers_only/sub/b.png"}
    assert by_figure["with_headline/a.png"]["headline"] == {"quick": True}
    assert by_figure["numbers_only/a.png"]["headline"] == {"x": 1.5, "nested/y": 2}
    entry = by_figure["numbers_only/sub/b.png"]
    assert entry["script"] == "numbers_only" and entry["config"]["quick"] and "--quick" in entry["config"]["argv"]
    assert entry["seconds"] > 0
    assert [s["returncode"] for s in manifest["scripts"]] == [0, 0, 3]


def test_compare_takes_its_graphs_from_a_sweep(tmp_path, monkeypatch, induction, induction_model):
    """`make figures`: circuits sweep computes the graphs, analyses.compare reads them and runs no engine."""
    from analyses import compare as analysis
    from analyses import figures

    spec = tmp_path / "spec.toml"
    spec.write_text('n = 8\nseeds = [0, 1]\ntasks = ["induction"]\n[[models]]\nname = "default"\n'
                    '[[engines]]\nname = "activation_patching"\n[[engines]]\nname = "cdt"\noptions = { receiver_count = 0 }\n')
    manifest = figures.build([], out=tmp_path / "figs", sweep_spec=spec)
    assert manifest["sweep"]["ran"] == 4 and manifest["sweep"]["failed"] == 0
    sweep_out = tmp_path / "figs" / "sweep"
    given = analysis.sweep_graphs(sweep_out, "induction", ["activation_patching", "cdt"])
    assert set(given) == {"activation_patching", "cdt"} and all(g.meta["seed"] == 0 for g in given.values())

    def no_engine_runs(*args, **kwargs):
        raise AssertionError("an engine ran although the sweep had its graph")

    monkeypatch.setattr(circuits, "discover", no_engine_runs)
    summary = analysis.run(["induction"], quick=True, out=tmp_path / "cmp", engine_names=["activation_patching", "cdt"],
                           models={"induction": induction_model}, graphs=sweep_out)
    record = json.loads((tmp_path / "cmp" / "compare_induction.json").read_text())
    expected = circuits.compare(given, induction_model, induction, n=32, seed=1, draws=10)
    assert record["spearman"] == {f"{a} · {b}": rho for (a, b), rho in expected.spearman.items()}
    assert summary["tasks"] == ["induction"]
