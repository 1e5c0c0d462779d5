"""Path patching: exactness against a literal per-pair loop and against activation patching, additivity
of direct effects in a linear model, the induction circuit's K-composition edge, typed errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import circuits
from circuits import hooks, models
from circuits.engines import kit
from circuits.engines import ActivationPatching, PathPatching
from circuits.engines.path_patching import top_receivers
from circuits.errors import InvalidOptionError, MetricError, UnknownNameError
from circuits.nodes import EMBED, LOGITS, MLP, Head
from tests.references import RandomTokens, activations, pair_loop, path_metric, tl_metric

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def toy(n_layers=2, n_heads=4, d_model=16, attn_only=True, normalization="LN", positional="standard",
        n_kv_heads=None, seed=0):
    """A random toy model; with `n_kv_heads`, grouped-query attention (as in SmolLM2)."""
    return models.toy(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=4, d_vocab=32, n_ctx=16,
                      attn_only=attn_only, normalization=normalization, positional=positional, n_kv_heads=n_kv_heads,
                      seed=seed)


TASK = RandomTokens(seq_len=8)


def batch_for(model, n=3, seed=0):
    return TASK.batch(model, n=n, seed=seed)


def assert_same_edges(ours, reference, tol=1e-4):
    assert ours.keys() == reference.keys()
    for edge in ours:
        assert ours[edge].keys() == reference[edge].keys()
        for combo in ours[edge]:
            assert ours[edge][combo] == pytest.approx(reference[edge][combo], abs=tol), (edge, combo)


# --- exactness ------------------------------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 10_000), n_layers=st.integers(2, 3), attn_only=st.booleans(),
       normalization=st.sampled_from(["LN", "RMS", None]), direction=st.sampled_from(["denoising", "noising"]),
       freeze_mlps=st.booleans(), inputs=st.sampled_from([("q", "k", "v"), ("k",), ("v", "q")]))
def test_engine_equals_the_literal_per_pair_loop(seed, n_layers, attn_only, normalization, direction, freeze_mlps,
                                                 inputs):
    model = toy(n_layers=n_layers, n_heads=2, attn_only=attn_only, normalization=normalization, seed=seed)
    # one sender of each kind (the loop's cost grows with senders x receivers); every receiver after them
    senders = (EMBED, "L0H1", "L1H0") + (() if attn_only else ("M0",))
    engine = PathPatching(direction=direction, freeze_mlps=freeze_mlps, inputs=inputs, senders=senders)
    batch = batch_for(model, seed=seed)
    assert_same_edges(engine.measure(model, TASK, batch).values, pair_loop(model, TASK, batch, engine))


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_grouped_query_attention_patches_one_query_head(n_kv_heads):
    """GQA (rotary, RMSNorm, MLPs, like SmolLM2): the reference resets the other query heads of the group,
    so a receiver's k/v edge is that query head's alone; the engine agrees exactly."""
    model = toy(n_heads=4, n_kv_heads=n_kv_heads, attn_only=False, normalization="RMS", positional="rotary", seed=3)
    assert model.W_K.shape[1] == n_kv_heads
    engine = PathPatching(senders=("L0H0", "L0H3"))
    batch = batch_for(model)
    ours = engine.measure(model, TASK, batch).values
    assert_same_edges(ours, pair_loop(model, TASK, batch, engine))
    # the query heads of one group get different k edges from the same sender: not one shared value
    k_edges = [ours[("L0H0", Head(1, h).name)]["k"] for h in range(4)]
    assert len({round(v, 6) for v in k_edges}) > 1


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_frozen_mlps_and_noising_head_to_head_edges(direction):
    """Deterministic cases of what the hypothesis test covers by chance: frozen MLPs and noising edges
    between heads, in a 3-layer MLP model, against the literal loop; freezing the MLPs changes the numbers."""
    model = toy(n_layers=3, attn_only=False, seed=21)
    batch = batch_for(model, seed=2)
    frozen = PathPatching(direction=direction, freeze_mlps=True, receivers=("L2H1", "L1H0"))
    ours = frozen.measure(model, TASK, batch).values
    assert_same_edges(ours, pair_loop(model, TASK, batch, frozen))
    recomputed = PathPatching(direction=direction, receivers=("L2H1", "L1H0")).measure(model, TASK, batch).values
    assert max(abs(ours[e][c] - recomputed[e][c]) for e in ours for c in ours[e] if e[0].startswith("L0")
               and e[1] == "L2H1") > 1e-4  # L0 -> L2 paths go through layer 0's and 1's MLPs


@pytest.mark.parametrize("freeze_mlps, direction", [(False, "denoising"), (True, "noising")])
def test_embed_and_mlp_edges_equal_the_literal_loop(freeze_mlps, direction):
    """The one edge graph: embed and MLPs as senders, MLP inputs as receivers, next to the head edges, against the
    literal loop (the MLP receiver's input replaced through TL4's hook_resid_mid, which only the MLP reads)."""
    model = toy(n_layers=2, n_heads=2, attn_only=False, normalization="RMS", seed=11)
    engine = PathPatching(freeze_mlps=freeze_mlps, direction=direction)
    batch = batch_for(model, seed=3)
    ours = engine.measure(model, TASK, batch).values
    assert_same_edges(ours, pair_loop(model, TASK, batch, engine))
    for edge in [(EMBED, "L0H0"), (EMBED, "M0"), ("L0H1", "M0"), ("M0", "L1H1"), ("M0", "M1"), ("L1H0", "M1"),
                 ("M1", LOGITS), (EMBED, LOGITS)]:
        assert edge in ours
    assert ("L1H0", "M0") not in ours and ("M1", "L1H0") not in ours  # later senders never reach earlier readers
    graph = engine.graph(model, engine.measure(model, TASK, batch))
    assert graph.meta["unscored_edges"]["kinds"] == [] and graph.meta["unscored_edges"]["partly"] == {}
    assert graph.nx.nodes["M1"]["score"] == pytest.approx(graph.nx.edges["M1", LOGITS]["score"])


def test_restricted_path_patching_states_its_unscored_edges():
    """Receivers restricted to the logits (as on SmolLM2): meta names every kind of edge left unscored."""
    model = toy(n_layers=2, n_heads=2, attn_only=False, seed=2)
    graph = PathPatching(receivers=(LOGITS,), per_input=False).run(model, TASK, n=2, seed=0)
    unscored = graph.meta["unscored_edges"]
    assert set(unscored["kinds"]) == {f"{s}->{r}" for s in ("embed", "head", "mlp")
                                      for r in ("head.q", "head.k", "head.v", "mlp")}
    assert "receivers=('logits',)" in unscored["words"] and "ranked last" in unscored["words"]
    joint = PathPatching(senders=("L0H0",), receivers=("L1H1",), per_input=False).run(model, TASK, n=2, seed=0)
    assert "head->head.k" in joint.meta["unscored_edges"]["whole_receiver"]


def test_bad_embed_and_mlp_names():
    model = toy(n_layers=2, attn_only=False)
    for bad, role in [({"senders": (LOGITS,)}, "sender"), ({"receivers": (EMBED,)}, "receiver"),
                      ({"receivers": ("M2",)}, "receiver")]:
        with pytest.raises(UnknownNameError, match=f"{role}.*M0 .. M1"):
            PathPatching(**bad).check(model)
    with pytest.raises(InvalidOptionError, match="'M0'"):  # an MLP reads after its own layer's heads, not itself
        PathPatching(senders=("M0",), receivers=("M0",)).check(model)
    PathPatching(senders=("L0H0",), receivers=("M0",)).check(model)
    with pytest.raises(UnknownNameError, match="'M0'"):
        PathPatching(senders=("M0",)).check(toy(attn_only=True))


def test_float_inputs_through_path_patching():
    """Continuous inputs (the residual entering block 0), as in the ICL regression task, against the literal loop."""
    from tasks.icl_regression import ICLRegression

    task = ICLRegression(d=5, L=8)
    model = models.toy(n_layers=2, n_heads=2, d_model=6, d_head=3, d_vocab=1, d_vocab_out=1, n_ctx=9,
                       positional="none", seed=4)
    batch = task.batch(model, n=4, seed=0)
    assert batch.clean.is_floating_point()
    engine = PathPatching()
    ours = engine.measure(model, task, batch).values
    assert_same_edges(ours, pair_loop(model, task, batch, engine))
    assert max(abs(v) for e in ours.values() for v in e.values()) > 0


def test_sender_positions_after_every_read_out_change_nothing(induction, random_model):
    """Induction prompts are read out inside the repeat: patching senders only after the last read-out
    position leaves every edge at the base metric (causal model)."""
    batch = induction.batch(random_model, n=3, seed=1)
    after = int(batch.position.max()) + 1
    assert after < batch.clean.shape[1]
    edges = PathPatching(positions=(after,), receivers=("L1H0", LOGITS)).measure(random_model, induction, batch).values
    base = tl_metric(random_model, induction, batch, batch.corrupted)
    assert all(value == pytest.approx(base, abs=1e-5) for edge in edges.values() for value in edge.values())


def test_sender_positions_restrict_the_patch():
    model = toy(n_layers=2, attn_only=False, seed=5)
    batch = batch_for(model)
    engine = PathPatching(positions=(1, 4), senders=("L0H1", "L0H2", "L1H0"))
    assert_same_edges(engine.measure(model, TASK, batch).values, pair_loop(model, TASK, batch, engine))
    everywhere = PathPatching(senders=("L0H1", "L0H2", "L1H0")).measure(model, TASK, batch).values
    assert engine.measure(model, TASK, batch).values != everywhere


@pytest.mark.parametrize("attn_only,direction", [(True, "denoising"), (False, "denoising"), (False, "noising")])
def test_last_layer_senders_to_logits_equal_activation_patching(attn_only, direction):
    model = toy(n_layers=3, attn_only=attn_only, seed=7)
    last = model.cfg.n_layers - 1
    senders = tuple(Head(last, h).name for h in range(model.cfg.n_heads))
    graph = PathPatching(direction=direction, senders=senders, receivers=(LOGITS,)).run(model, TASK, n=4, seed=1)
    activation = ActivationPatching(direction=direction).run(model, TASK, n=4, seed=1)
    for name in senders:
        assert graph.nx.edges[name, LOGITS]["score"] == pytest.approx(activation.scores()[name], abs=1e-4)
        assert graph.scores()[name] == pytest.approx(activation.scores()[name], abs=1e-4)


@SETTINGS
@given(seed=st.integers(0, 10_000), n_layers=st.integers(1, 3), n_heads=st.integers(1, 4),
       direction=st.sampled_from(["denoising", "noising"]))
def test_direct_effects_add_up_without_layernorm(seed, n_layers, n_heads, direction):
    """Attention-only, no LayerNorm: with patterns frozen the logits are linear in the embedding and the head
    outputs, so the per-sender direct effects (embed and every head) add up to the direct effect of patching
    every sender at once."""
    model = toy(n_layers=n_layers, n_heads=n_heads, normalization=None, seed=seed)
    batch = batch_for(model, seed=seed)
    engine = PathPatching(direction=direction, receivers=(LOGITS,))
    edges = engine.measure(model, TASK, batch).values
    runs = kit.PatchRuns.prepare(model, TASK, batch, direction)
    base = runs.corrupted_metric if direction == "denoising" else runs.clean_metric
    every = [EMBED] + [(layer, head) for layer in range(n_layers) for head in range(n_heads)]  # embed: linear too
    together = path_metric(model, TASK, batch, every, LOGITS, direction=direction)
    assert sum(e[""] - base for e in edges.values()) == pytest.approx(together - base, abs=1e-4)
    baseline = runs.baseline()
    graph = PathPatching(direction=direction, receivers=(LOGITS,)).run(model, _Fixed(batch), n=3)
    direct = {u: d["score"] for u, _, d in graph.nx.in_edges(LOGITS, data=True)}
    assert {u: direct[u] for u in graph.scores()} == graph.scores()  # a head's node score: its direct effect
    assert sum(direct.values()) == pytest.approx(float(baseline.score(torch.tensor(together), direction)), abs=1e-4)


class _Fixed:
    """A task that always returns the same batch (so `run` and the reference see the same prompts)."""

    name = "fixed"

    def __init__(self, batch, fail_after=None):
        self._batch, self.calls, self.fail_after = batch, 0, fail_after

    def batch(self, model, n, seed):
        return self._batch

    def metric(self, logits, batch):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise MetricError("deliberate failure")
        return TASK.metric(logits, batch)

    def default_model(self):
        raise NotImplementedError


# --- the induction circuit ------------------------------------------------------------------------------
def test_induction_key_input_comes_from_the_previous_token_head(induction, induction_model):
    """The strongest edge into the top induction head's key input comes from the layer-0 previous-token head."""
    model = induction_model
    graph = PathPatching(senders=tuple(Head(0, h).name for h in range(model.cfg.n_heads))).run(
        model, induction, n=24, seed=0)
    # The top induction head by activation patching. (Senders are layer-0 heads only, so the path graph
    # measures no layer-1 direct effects: its layer-1 heads are unscored.)
    (top, _), = circuits.discover(model, induction, n=24, seed=0).top(1, by="signed")
    assert graph.nx.nodes[top]["layer"] == 1 and "score" not in graph.nx.nodes[top]
    into_key = {u: data["score_k"] for u, _, data in graph.nx.in_edges(top, data=True)}
    strongest = max(into_key, key=lambda u: abs(into_key[u]))
    batch = induction.batch(model, n=24, seed=0)
    pattern = hooks.site(model, 0, "pattern")
    previous = activations(model, batch.clean, [pattern])[pattern].diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))
    assert strongest == Head(0, int(previous.argmax())).name == "L0H3"
    # Negative when denoising: the key now says "my previous token is x_k" at a position whose (corrupted)
    # value is the foil y_{k+1}, so the head copies the foil. What matters is the size.
    assert abs(into_key[strongest]) > 0.2 and previous.max() > 0.5
    assert into_key[strongest] < 0  # the sign docs/path_patching.md states
    assert abs(into_key[strongest]) > 2 * max(abs(v) for u, v in into_key.items() if u != strongest)


# --- the result -----------------------------------------------------------------------------------------
def test_graph_edges_nodes_meta_and_registry(random_model):
    task = RandomTokens(seq_len=8)
    graph = circuits.discover(random_model, task, engine="path_patching", n=3, seed=0)
    assert graph.meta["engine"] == "path_patching" and graph.meta["options"]["inputs"] == ("q", "k", "v")
    assert len(graph.heads()) == 8
    data = graph.nx.edges["L0H1", "L1H2"]
    assert data["inputs"] == "q+k+v" and {"score_q", "score_k", "score_v"} <= set(data)
    batch = task.batch(random_model, n=3, seed=0)  # node score = direct effect, normalised by plain model() runs
    clean, corrupted = (tl_metric(random_model, task, batch, tokens) for tokens in (batch.clean, batch.corrupted))
    direct = path_metric(random_model, task, batch, [(1, 2)], LOGITS)
    assert graph.nx.nodes["L1H2"]["score"] == pytest.approx((direct - corrupted) / (clean - corrupted), abs=1e-4)
    assert graph.nx.edges["L1H2", LOGITS]["score"] == graph.nx.nodes["L1H2"]["score"]
    assert not any(graph.nx.has_edge(Head(1, a).name, Head(1, b).name) for a in range(4) for b in range(4))
    assert not any(graph.nx.has_edge(Head(1, a).name, Head(0, b).name) for a in range(4) for b in range(4))
    assert graph.nx.number_of_edges() == 8 + 4 * 4 + 9  # embed -> every head, L0 -> L1 heads, embed and heads -> logits
    assert graph.meta["unscored_edges"]["kinds"] == []


def test_iterative_discovery_from_the_logits(random_model):
    task = RandomTokens(seq_len=8)
    first = PathPatching(receivers=(LOGITS,)).run(random_model, task, n=3)
    by_size = sorted(first.scores(), key=lambda name: -abs(first.scores()[name]))  # the k largest |direct effect|
    assert top_receivers(first, 3) == (*by_size[:3], LOGITS)
    assert top_receivers(first, 3, include_logits=False) == tuple(by_size[:3])
    layer1 = tuple(r for r in by_size if r.startswith("L1"))[:2]
    second = PathPatching(receivers=layer1, per_input=False).run(random_model, task, n=3)
    assert {v for _, v in second.nx.edges()} == set(layer1)
    assert all("score_q" not in d for _, _, d in second.nx.edges(data=True))
    with pytest.raises(InvalidOptionError, match="k=0"):
        top_receivers(first, 0)
    assert top_receivers(first, 1) == (by_size[0], LOGITS)


def test_model_left_as_found_even_when_raising(random_model):
    batch = batch_for(random_model)
    random_model.train()
    with pytest.raises(MetricError):
        PathPatching().run(random_model, _Fixed(batch, fail_after=4), n=3)
    assert random_model.training
    assert all(not point.fwd_hooks for point in random_model.hook_dict.values())
    random_model.eval()


# --- bad input ------------------------------------------------------------------------------------------
def test_bad_input_gets_typed_errors_naming_the_value(random_model):
    task = RandomTokens(seq_len=8)
    with pytest.raises(InvalidOptionError, match="'L0H1'"):
        PathPatching(senders=("L1H0",), receivers=("L0H1",)).run(random_model, task, n=2)
    with pytest.raises(InvalidOptionError, match="'L1H1'"):  # same layer is not later
        PathPatching(senders=("L1H0",), receivers=("L1H1",)).run(random_model, task, n=2)
    with pytest.raises(UnknownNameError, match="'L9H9'.*L0H0 .. L1H3.*'logits' \\(receivers only\\)"):
        PathPatching(receivers=("L9H9",)).run(random_model, task, n=2)
    with pytest.raises(UnknownNameError, match="'L0H7'"):
        PathPatching(senders=("L0H7",)).run(random_model, task, n=2)
    with pytest.raises(UnknownNameError, match="'head0'"):
        PathPatching(senders=("head0",)).run(random_model, task, n=2)
    with pytest.raises(InvalidOptionError, match="'key'.*'q', 'k', 'v'"):
        PathPatching(inputs=("q", "key"))
    with pytest.raises(InvalidOptionError, match="'sideways'"):
        PathPatching(direction="sideways")
    with pytest.raises(InvalidOptionError, match=r"\[99\]"):
        PathPatching(positions=(0, 99)).run(random_model, task, n=2)
    with pytest.raises(InvalidOptionError, match=r"\[8\].*\[0, 8\)"):  # one past the end
        PathPatching(positions=(8,)).run(random_model, task, n=2)
    with pytest.raises(UnknownNameError):
        circuits.engines.get("path_pathcing")


def test_induction_paths_analysis_quick(tmp_path, induction_model):
    from analyses import induction_paths

    graph = induction_paths.main(["--quick", "--out", str(tmp_path)])
    png = tmp_path / "induction_paths.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "induction_paths.json").exists()
    assert graph.nx.number_of_edges() == 16 + 8
