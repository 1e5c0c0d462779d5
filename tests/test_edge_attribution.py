"""Edge attribution (EAP, EAP-IG): identities against independent computations on random float64 toys.

References here are plain: one forward pass with a leaf tensor substituted at one hook (hook names spelled
here) and ``torch.autograd.grad`` on it, exact path patching, and a grouped-query model compared with its
ungrouped twin (k/v weights repeated per query head).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from circuits import forward, hooks, models
from circuits._task import PromptBatch
from circuits.engines import ActivationPatching, PathPatching
from circuits.engines.edge_attribution import EdgeAttribution, Layout, reader_gradients
from circuits.errors import InvalidBatchError, InvalidOptionError, MetricError
from circuits.nodes import EMBED, LOGITS, MLP, Head
from tests.references import RandomTokens

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    phases=[Phase.explicit, Phase.generate])  # shrinking a float64 model takes minutes
TASK = RandomTokens(seq_len=6)
Z, MLP_OUT, PRE, POST = ("blocks.{}.attn.hook_z", "blocks.{}.hook_mlp_out", "blocks.{}.hook_resid_pre",
                         "blocks.{}.hook_resid_post")


pytestmark = pytest.mark.usefixtures("one_thread")


def config(n_layers=2, n_heads=4, attn_only=True, normalization="LN", positional="standard", n_kv_heads=None,
           seed=0):
    return models.ToyConfig(n_layers=n_layers, n_heads=n_heads, d_model=16, d_head=4, d_vocab=32, n_ctx=16,
                            attn_only=attn_only, d_mlp=None if attn_only else 24, normalization=normalization,
                            positional=positional, n_kv_heads=n_kv_heads, seed=seed)


def toy(**kwargs):
    return models.toy(config(**kwargs)).to(torch.float64)


def tolerance(model):
    """float64 throughout, except TransformerLens's native RMSNorm, which computes its scale in float32."""
    return dict(rel=1e-5, abs=1e-6) if model.cfg.normalization_type == "RMS" else dict(rel=1e-8, abs=1e-10)


toys = st.fixed_dictionaries(dict(
    seed=st.integers(0, 10_000), attn_only=st.booleans(), normalization=st.sampled_from(["LN", "RMS"]),
    positional=st.sampled_from(["standard", "rotary"]), n_kv_heads=st.sampled_from([None, 1, 2])))


# --- independent references ---------------------------------------------------------------------------------
def leaf_gradient(model, batch, residual, name=None, task=TASK):
    """d(summed metric)/d(activation at hook `name`) on the run from `residual` (entering block 0), the
    activation replaced by a leaf of the same value; `name` None: the gradient at `residual` itself."""
    residual = residual.detach().clone().requires_grad_(name is None)
    leaf = {}

    def substitute(tensor, hook):
        leaf["x"] = tensor.detach().clone().requires_grad_()
        return leaf["x"]

    fwd = [] if name is None else [(name, substitute)]
    with torch.enable_grad(), hooks.attached(model, fwd):
        total = task.metric(forward.run_from(model, residual, 0, batch.position), batch).sum()
        return torch.autograd.grad(total, residual if name is None else leaf["x"])[0]


def base_and_change(model, batch, name):
    """The activation at hook `name` on the corrupted (base, denoising) run and clean minus corrupted."""
    cache = {}
    fwd = [(name, lambda t, hook: cache.setdefault(len(cache), t.detach().clone()))]
    with torch.no_grad():
        for inputs in (batch.corrupted, batch.clean):
            with hooks.attached(model, fwd):
                forward.logits(model, inputs)
    return cache[0], cache[1] - cache[0]


def embeddings(model, batch):
    with torch.no_grad():
        base = forward.embed(model, batch.corrupted)
        return base, forward.embed(model, batch.clean) - base


def gap(model, batch):
    with torch.no_grad():
        clean, corrupted = (TASK.metric(forward.logits(model, x, batch.position), batch).mean().item()
                            for x in (batch.clean, batch.corrupted))
    return clean - corrupted


def outgoing(graph, node):
    return sum(s for _, _, s in graph.nx.out_edges(node, data="score"))


# --- identities ------------------------------------------------------------------------------------------------
@SETTINGS
@given(kwargs=toys, method=st.sampled_from(["eap", "eap_ig_inputs"]))
def test_a_writer_edges_sum_to_the_writers_total_attribution(kwargs, method):
    """(a) For every writer, the sum of its edge scores (logits included) is Δa_u · dM/da_u, the gradient
    taken at the writer's own output on plain forward passes (averaged over the same IG points)."""
    model = toy(**kwargs)
    batch = TASK.batch(model, n=3, seed=kwargs["seed"])
    engine = EdgeAttribution(method=method, steps=3)
    graph = engine.run(model, TASK, n=3, seed=kwargs["seed"])
    base0, change0 = embeddings(model, batch)
    residuals = [base0 + a * change0 for a in engine.alphas()]
    # the library's Baseline holds float32 metric means: normalise by the gap the engine used, checked apart
    used_gap = graph.meta["metric_clean"] - graph.meta["metric_corrupted"]
    # float32 means of the metric: a few dozen ulps of the larger mean (hypothesis found 1.05e-5 at size ~10)
    ulps = 32 * torch.finfo(torch.float32).eps * max(abs(graph.meta["metric_clean"]), abs(graph.meta["metric_corrupted"]))
    assert used_gap == pytest.approx(gap(model, batch), abs=max(1e-5, ulps))
    scale = used_gap * batch.size * len(residuals)
    expected = {EMBED: sum((change0 * leaf_gradient(model, batch, r)).sum() for r in residuals) / scale}
    for layer in range(model.cfg.n_layers):
        _, dz = base_and_change(model, batch, Z.format(layer))
        g = sum(leaf_gradient(model, batch, r, Z.format(layer)) for r in residuals)
        for h in range(model.cfg.n_heads):
            expected[Head(layer, h).name] = (dz[:, :, h] * g[:, :, h]).sum() / scale
        if not model.cfg.attn_only:
            _, dm = base_and_change(model, batch, MLP_OUT.format(layer))
            g = sum(leaf_gradient(model, batch, r, MLP_OUT.format(layer)) for r in residuals)
            expected[MLP(layer).name] = (dm * g).sum() / scale
    for node, value in expected.items():
        assert outgoing(graph, node) == pytest.approx(float(value), **tolerance(model)), node
        if node != EMBED:
            assert graph.nx.nodes[node]["score"] == pytest.approx(float(value), **tolerance(model))


@SETTINGS
@given(kwargs=toys)
def test_b_per_head_reader_gradients_sum_to_the_blocks_gradient_change(kwargs):
    """(b) Summed over heads and q/k/v, the reader gradients of block l are g(resid_pre) - g(resid_mid), the
    MLP reader's is g(resid_mid) - g(resid_post), the logits reader's g(final residual). (TransformerLens 4's
    ``hook_resid_mid`` is ln2's input, read by the MLP branch alone: its leaf gradient is the MLP input's,
    and g(resid_mid) = g(resid_post) + that.)"""
    model = toy(**kwargs)
    batch = TASK.batch(model, n=2, seed=kwargs["seed"])
    residual = embeddings(model, batch)[0]
    layout = Layout.of(model)
    grads = torch.cat(reader_gradients(model, TASK, batch, residual))
    readers = layout.readers
    assert grads.shape[0] == len(readers)
    cfg = model.cfg
    tol = tolerance(model)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=tol["rel"], atol=tol["abs"])  # noqa: E731
    for layer in range(cfg.n_layers):
        pre = leaf_gradient(model, batch, residual, PRE.format(layer))
        post = leaf_gradient(model, batch, residual, POST.format(layer))
        mlp_in = 0 if cfg.attn_only else leaf_gradient(model, batch, residual, f"blocks.{layer}.hook_resid_mid")
        mid = post + mlp_in
        heads = [i for i, (node, which, _) in enumerate(readers) if which and node.startswith(f"L{layer}H")]
        assert len(heads) == 3 * cfg.n_heads
        close(grads[heads].sum(0), pre - mid)
        if not cfg.attn_only:
            close(grads[readers.index((MLP(layer).name, "", 2 * layer + 1))], mlp_in)
    close(grads[-1], post)


@pytest.mark.parametrize("attn_only, direction", [(True, "denoising"), (False, "denoising"), (False, "noising")])
@pytest.mark.parametrize("method", ["eap", "eap_ig_inputs", "eap_ig_activations", "eap_ig_stagewise"])
def test_c_edges_into_logits_equal_path_patchings_direct_effect(attn_only, direction, method):
    """(c) No final norm (no norm at all) and a logit-difference metric: the metric is linear in the final
    residual, so s(u -> logits) equals exact path patching's direct effect (MLPs frozen there)."""
    model = toy(attn_only=attn_only, normalization=None, seed=4)
    ours = EdgeAttribution(method=method, direction=direction).run(model, TASK, n=3, seed=1)
    exact = PathPatching(receivers=(LOGITS,), freeze_mlps=True, direction=direction).run(model, TASK, n=3, seed=1)
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            head = Head(layer, h).name
            # path patching's metric means are float32 (copies_metric): about 1e-7 of the metric's size
            assert ours.nx.edges[head, LOGITS]["score"] == pytest.approx(exact.nx.edges[head, LOGITS]["score"],
                                                                         rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("method", ["eap_ig_inputs", "eap_ig_stagewise"])
def test_e_one_point_at_the_base_end_is_eap(direction, method):
    """(e) With ``quadrature="base_end"``, ``steps=1`` evaluates the gradient at the base run: EAP exactly."""
    model = toy(attn_only=False, normalization="RMS", positional="rotary", n_kv_heads=2, seed=2)
    eap = EdgeAttribution(method="eap", direction=direction).run(model, TASK, n=3)
    ig = EdgeAttribution(method=method, steps=1, quadrature="base_end", direction=direction).run(model, TASK, n=3)
    assert eap.nx.number_of_edges() == ig.nx.number_of_edges() > 0
    for u, v, s in eap.nx.edges(data="score"):
        assert ig.nx.edges[u, v]["score"] == pytest.approx(s, rel=1e-12, abs=1e-14)  # the same computation


def test_grouped_query_attention_equals_its_ungrouped_twin():
    """GQA: per-query-head k/v gradients are recovered. The twin without grouping, whose k/v weights are
    the shared ones repeated per query head, computes the same function; every edge score (per input)
    must agree, so a query head's k/v edges are its own, not its group's."""
    grouped_config = config(attn_only=False, normalization="RMS", positional="rotary", n_kv_heads=2, seed=7)
    twin_config = config(attn_only=False, normalization="RMS", positional="rotary", seed=7)
    grouped, twin = models.new_native(grouped_config), models.new_native(twin_config)
    state = grouped.state_dict()
    repeats = grouped_config.n_heads // grouped_config.n_kv_heads
    for key, value in list(state.items()):
        if key.endswith(("attn.k.weight", "attn.k.bias", "attn.v.weight", "attn.v.bias")):
            per_head = value.reshape(grouped_config.n_kv_heads, 4, *value.shape[1:])
            state[key] = per_head.repeat_interleave(repeats, 0).reshape(-1, *value.shape[1:])
    twin.load_state_dict(state)
    grouped = models.wrap(grouped, grouped_config).to(torch.float64)
    twin = models.wrap(twin, twin_config).to(torch.float64)
    ours, theirs = (EdgeAttribution(method="eap").run(m, TASK, n=3) for m in (grouped, twin))
    assert ours.nx.number_of_edges() == theirs.nx.number_of_edges()
    for u, v, data in theirs.nx.edges(data=True):
        for key in ("score", "score_q", "score_k", "score_v"):
            if key in data:
                assert ours.nx.edges[u, v][key] == pytest.approx(data[key], **tolerance(twin)), (u, v, key)
    k_scores = [ours.nx.edges["L0H0", Head(1, h).name]["score_k"] for h in range(4)]
    assert len({round(s, 8) for s in k_scores}) == 4  # the two query heads of a group differ


def test_graph_layout_and_meta():
    model = toy(attn_only=False, seed=3)
    graph = EdgeAttribution(method="eap_ig_inputs", steps=4, direction="noising").run(model, TASK, n=2)
    assert graph.meta["method"] == "eap_ig_inputs" and graph.meta["steps"] == 4
    assert graph.meta["direction"] == "noising" and graph.meta["alphas"] == [0.125, 0.375, 0.625, 0.875]
    assert sorted(graph.mlps()) == ["M0", "M1"] and len(graph.heads()) == 8
    assert graph.matrix().shape == (2, 4) and not graph.matrix().isnan().any()
    # writers: embed -> 8 heads + 2 MLPs + logits; L0 heads -> M0, 4 L1 heads, M1, logits; M0 -> L1 heads, M1,
    # logits; L1 heads -> M1, logits; M1 -> logits
    assert graph.nx.number_of_edges() == 11 + 4 * 7 + 6 + 4 * 2 + 1
    edge = graph.nx.edges["L0H1", "L1H2"]
    assert edge["score"] == pytest.approx(edge["score_q"] + edge["score_k"] + edge["score_v"])
    assert not graph.nx.has_edge("L1H0", "L1H2") and not graph.nx.has_edge("M0", "L0H1")


# --- typed errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, bad", [(dict(steps=0), "steps=0"), (dict(steps=-2), "steps=-2"),
                                          (dict(method="acdc"), "acdc"),
                                          (dict(quadrature="simpson"), "simpson"), (dict(direction="up"), "up"),
                                          (dict(memory_mb=-1.0), "memory_mb=-1.0")])
def test_bad_options_raise_typed_errors(options, bad):
    with pytest.raises(InvalidOptionError, match=bad):
        EdgeAttribution(**options)


class _Lengths(RandomTokens):
    def batch(self, model, n, seed):
        batch = super().batch(model, n, seed)
        return PromptBatch(clean=batch.clean, corrupted=batch.corrupted[:, :-1], answer=batch.answer,
                           foil=batch.foil, position=batch.position)


class _NoGrad(RandomTokens):
    def metric(self, logits, batch):
        return super().metric(logits, batch).detach()


def test_clean_and_corrupted_of_different_lengths_are_refused():
    with pytest.raises(InvalidBatchError, match=r"clean \(2, 6\) and corrupted \(2, 5\)"):
        EdgeAttribution().run(toy(), _Lengths(seq_len=6), n=2)


def test_a_metric_without_grad_is_refused():
    with pytest.raises(MetricError, match="no grad"):
        EdgeAttribution().run(toy(), _NoGrad(seq_len=6), n=2)


def test_memory_budget_chunks_the_batch_without_changing_scores():
    model = toy(attn_only=False, n_kv_heads=2, seed=5)
    whole = EdgeAttribution(method="eap_ig_inputs", steps=2).run(model, TASK, n=5)
    chunked = EdgeAttribution(method="eap_ig_inputs", steps=2, memory_mb=0.01).run(model, TASK, n=5)
    for u, v, s in whole.nx.edges(data="score"):
        assert chunked.nx.edges[u, v]["score"] == pytest.approx(s, rel=1e-9, abs=1e-12)


# --- the induction circuit -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["eap", "eap_ig_inputs", "eap_ig_activations", "eap_ig_stagewise"])
def test_induction_top_head_and_its_previous_token_key_edge(method, induction, induction_model):
    """On the default induction model: the top layer-1 head is activation patching's, and the strongest
    key-input edge into it (by magnitude) comes from the previous-token head L0H3, negative when denoising,
    as exact path patching finds it."""
    graph = EdgeAttribution(method=method).run(induction_model, induction, n=32, seed=0)
    patched = ActivationPatching().run(induction_model, induction, n=32, seed=0)
    layer_1 = lambda scores: {n: s for n, s in scores.items() if n.startswith("L1")}  # noqa: E731
    top = max(layer_1(graph.scores()).items(), key=lambda item: item[1])[0]
    assert top == max(layer_1(patched.scores()).items(), key=lambda item: item[1])[0]
    keys = {u: d["score_k"] for u, _, d in graph.nx.in_edges(top, data=True) if "score_k" in d}
    # among head senders, as exact path patching below: on the shipped induction model EAP's gradient scores the
    # embed -> L1H0<k> edge (-0.023) a hair above L0H3's (-0.020), where exact patching gives -0.024 and -0.347
    strongest = max((u for u in keys if u != EMBED), key=lambda u: abs(keys[u]))
    assert strongest == "L0H3" and keys[strongest] < 0
    exact = PathPatching(senders=tuple(k for k in keys if k != EMBED), receivers=(top,)).run(
        induction_model, induction, n=32, seed=0)
    exact_keys = {u: d["score_k"] for u, _, d in exact.nx.in_edges(top, data=True)}
    assert max(exact_keys, key=lambda u: abs(exact_keys[u])) == "L0H3" and exact_keys["L0H3"] < 0


def patched_layer_score(model, batch, layer):
    """Activation patching of every head of `layer` at once (denoising): corrupted run, z set to clean."""
    _, change = base_and_change(model, batch, Z.format(layer))
    clean_z = base_and_change(model, batch, Z.format(layer))[0] + change
    with torch.no_grad(), hooks.attached(model, [(Z.format(layer), lambda t, hook: clean_z)]):
        patched = TASK.metric(forward.logits(model, batch.corrupted, batch.position), batch).mean().item()
    with torch.no_grad():
        corrupted = TASK.metric(forward.logits(model, batch.corrupted, batch.position), batch).mean().item()
    return (patched - corrupted) / gap(model, batch)


@pytest.mark.parametrize("normalization", ["LN", None])
def test_d_integrated_gradients_converge_to_exact_patching_like_one_over_steps_squared(normalization):
    """(d) Completeness of IG: the interpolated stage's writers together score (Δa · mean gradient) the exact
    effect of patching that whole stage in the limit; with the midpoint rule the error shrinks like 1/steps²
    (x1/16 from 2 to 8 steps), with the base-end rule like 1/steps. Stages: layer 0's heads
    (eap_ig_stagewise; exact: activation patching of all of them) and the input (eap_ig_inputs; exact: 1,
    clean vs corrupted). Attention-only, so the heads' edges are all their paths."""
    model = toy(n_layers=2, normalization=normalization, seed=6)
    batch = TASK.batch(model, n=3, seed=0)
    exact_layer = patched_layer_score(model, batch, 0)

    def errors(method, quadrature, exact, total):
        out = []
        for steps in (2, 8):
            graph = EdgeAttribution(method=method, steps=steps, quadrature=quadrature).run(model, TASK, n=3)
            out.append(abs(total(graph) - exact))
        return out

    layer_0 = lambda g: sum(g.nx.nodes[Head(0, h).name]["score"] for h in range(4))  # noqa: E731
    embed = lambda g: outgoing(g, EMBED)  # noqa: E731
    for method, exact, total in (("eap_ig_stagewise", exact_layer, layer_0), ("eap_ig_inputs", 1.0, embed)):
        coarse, fine = errors(method, "midpoint", exact, total)
        assert fine < coarse / 8 and fine < 0.05 * abs(exact), (method, coarse, fine)  # 1/16 expected
        coarse_end, fine_end = errors(method, "base_end", exact, total)
        assert coarse_end / 6 < fine_end < coarse_end / 2.5, (method, coarse_end, fine_end)  # 1/4 expected


@pytest.mark.slow
def test_bundled_smollm2_reader_gradients_split_the_blocks_gradient(bundled_model):
    """SmolLM2 (Hugging Face Llama through the bridge: RMSNorm, rotary, 9 query / 3 KV heads, gated MLPs):
    the per-head q/k/v reader gradients of a block sum to its attention's input-gradient change and the MLP
    reader is the MLP branch's input gradient, from leaf substitutions (float32: relative 1e-4)."""
    task = RandomTokens(seq_len=8)
    batch = task.batch(bundled_model, n=2, seed=0)
    with torch.no_grad():
        residual = forward.embed(bundled_model, batch.corrupted)
    readers = Layout.of(bundled_model).readers
    grads = torch.cat(reader_gradients(bundled_model, task, batch, residual))

    def leaf(name):
        return leaf_gradient(bundled_model, batch, residual, name, task=task)

    for layer in (1, 17):
        pre, post, mlp_in = leaf(PRE.format(layer)), leaf(POST.format(layer)), leaf(f"blocks.{layer}.hook_resid_mid")
        heads = [i for i, (node, which, _) in enumerate(readers) if which and node.startswith(f"L{layer}H")]
        attention = pre - post - mlp_in
        assert (grads[heads].sum(0) - attention).norm() < 1e-4 * attention.norm()
        mlp = grads[readers.index((MLP(layer).name, "", 2 * layer + 1))]
        assert (mlp - mlp_in).norm() < 1e-4 * mlp_in.norm()


def test_benchmark_quick_form_agrees_with_path_patching():
    """`python -m benchmarks.edge_attribution --quick`: on the 4L x 8H toy, EAP's ranking of the top 5% of edges
    agrees with exact path patching's (measured there: Spearman 0.975)."""
    from benchmarks.edge_attribution import main, spearman

    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 40.0, 30.0]) == pytest.approx(0.8)
    results = main(["--quick"])["toy"]
    # path patching's default senders now include the input: 8x8 head pairs x 6 layer gaps + 32 heads -> logits,
    # plus embed -> each of the 32 heads and the logits
    assert results["EAP"]["spearman_top"] > 0.9 and results["EAP"]["edges"] == 8 * 8 * 6 + 32 + 33
