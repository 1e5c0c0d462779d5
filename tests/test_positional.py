"""Position-aware circuits (docs/positional.md): edges at a token or a span, evaluated against a literal per-token
reference (`tests.references.edge_circuit_metric` with `kept_tokens`), edge attribution per position summing to the
plain graph, selection, JSON and typed errors; tiny float64 toys."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import tasks
from circuits import Edge, HeadGraph, hooks, models, nodes, tokens
from circuits.engines.base import prompts, session
from circuits.engines.edge_attribution import EdgeAttribution
from circuits.engines.path_patching import PathPatching
from circuits.errors import InvalidBatchError, InvalidEdgeError, InvalidOptionError, PromptFileError
from circuits.evaluation import evaluate
from circuits.mib import mib_edge_name, read_circuit
from circuits.nodes import MLP
from tests.references import RandomTokens, edge_circuit_metric, literal_ablations, path_metrics
from tests.test_evaluation import toy  # the same float64 toys as the plain evaluation's tests
from tests.tiny_hf import save_tiny_llama

SPANS = ("first", "middle", "end", "other")


@dataclasses.dataclass(frozen=True)
class SpanTokens(RandomTokens):
    """Random prompts whose spans differ from prompt to prompt: the last token is "end", the rest drawn at random
    from the other spans (so a span covers different tokens, or none, in different prompts)."""

    name: str = "span_tokens"

    def batch(self, model, n, seed):
        batch = super().batch(model, n, seed)
        spans = torch.randint(len(SPANS), (n, self.seq_len), generator=torch.Generator().manual_seed(seed + 99))
        spans[spans == SPANS.index("end")] = SPANS.index("other")
        spans[:, -1] = SPANS.index("end")
        return dataclasses.replace(batch, spans=spans, span_names=SPANS)


TASK = SpanTokens(seq_len=6)


pytestmark = pytest.mark.usefixtures("one_thread")


def positional_circuits(model, count, seed):
    """Random circuits mixing plain edges, edges at token indices and edges at spans."""
    g = torch.Generator().manual_seed(seed)
    where = [None, *range(TASK.seq_len), *SPANS]
    out = []
    for p in torch.linspace(0.3, 0.8, count).tolist():
        chosen = set()
        for edge in nodes.all_edges(model):
            for position in where:
                if float(torch.rand(1, generator=g)) < p / len(where) * (0.3 if position is None else 1.0):
                    chosen.add(edge.at(position))
        out.append(frozenset(chosen))
    return out


def literal(model, circuits_, ablation, n=4, seed=1):
    with session(model):
        batch = prompts(model, TASK, n, seed)
        ablated = literal_ablations(model, batch, ablation, prompts(model, TASK, n, seed + 1))
        return [edge_circuit_metric(model, TASK, batch, c, ablated) for c in circuits_]


# --- edges at positions ----------------------------------------------------------------------------------------
def test_edge_names_with_positions_read_back_and_plain_edges_are_unchanged():
    edge = Edge("L0H3", "L1H0", "k", "end")
    assert edge.name == "L0H3->L1H0<k>@end" and Edge.parse(edge.name) == edge
    assert Edge.parse("L0H3->logits@5") == Edge("L0H3", "logits", position=5) == Edge("L0H3", "logits", None, "5")
    assert Edge.parse("L0H3->L1H0<k>") == Edge("L0H3", "L1H0", "k") and Edge("L0H3", "L1H0", "k").position is None
    assert edge.plain == Edge("L0H3", "L1H0", "k") and edge.plain.at("end") == edge and edge != edge.plain
    assert len({Edge("embed", "M0"), Edge("embed", "M0", None, None)}) == 1
    for bad in (-1, "a b", "x@y", ""):
        with pytest.raises(InvalidEdgeError, match="position"):
            Edge("L0H3", "logits", position=bad)


def test_batch_spans_follow_rows_repeats_trimming_and_are_validated():
    model = toy("ln_mlp")
    batch = TASK.batch(model, 4, 0)
    batch.validate(model)
    assert torch.equal(batch.rows(range(1, 3)).spans, batch.spans[1:3])
    assert torch.equal(batch.repeated(2).spans, batch.spans.repeat(2, 1))
    short = dataclasses.replace(batch, position=torch.full((4,), 3))
    trimmed = short.trimmed(causal=True, at_least=1)
    assert trimmed.spans.shape == (4, 4) and trimmed.n_positions == 6
    bad = {"spans of another shape": dict(spans=batch.spans[:, :3]),
           "an index out of range": dict(spans=batch.spans + 4),
           "names without spans": dict(spans=None),
           "repeated names": dict(span_names=("a", "a", "b", "c")),
           "names of digits": dict(span_names=("0", "a", "b", "c"))}
    for why, change in bad.items():
        with pytest.raises(InvalidBatchError):
            dataclasses.replace(batch, **change).validate(model)


# --- evaluation against the literal reference ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ln_mlp", "rms_rotary_gqa_mlp"])
@pytest.mark.parametrize("ablation", ["patching", "mean"])
def test_positional_evaluation_equals_the_literal_per_token_reference(name, ablation):
    model = toy(name)
    chosen = positional_circuits(model, 2, seed=len(name))
    result = evaluate(model, TASK, chosen, ablation=ablation, n=4)
    expected = literal(model, chosen + [frozenset()], ablation)
    assert result.metrics == pytest.approx(expected[:-1], abs=1e-5)
    assert result.empty == pytest.approx(expected[-1], abs=1e-5)
    plain = evaluate(model, TASK, [frozenset(e.plain for e in c) for c in chosen], ablation=ablation, n=4)
    assert all(abs(a - b) > 1e-3 for a, b in zip(result.metrics, plain.metrics))  # positions matter here


def test_edges_at_every_token_or_every_span_are_the_plain_edge():
    """An edge held at every token index, or at every span, is the plain edge: the same metric as the plain circuit,
    and the whole circuit at every position is the plain model."""
    model = toy("rms_rotary_gqa_mlp")
    every = nodes.all_edges(model)
    plain = frozenset(every[::3])
    by_token = frozenset(e.at(p) for e in plain for p in range(TASK.seq_len))
    by_span = frozenset(e.at(s) for e in plain for s in SPANS)
    whole = frozenset(e.at(s) for e in every for s in SPANS)
    result = evaluate(model, TASK, [plain, by_token, by_span, whole, frozenset()], n=4)
    assert result.metrics[1] == pytest.approx(result.metrics[0], abs=1e-9)
    assert result.metrics[2] == pytest.approx(result.metrics[0], abs=1e-9)
    assert result.metrics[3] == result.full and result.metrics[4] == result.empty
    assert result.faithfulness[3] == 1.0 and result.faithfulness[4] == 0.0


def test_positions_the_prompts_lack_are_typed_errors_naming_them():
    model = toy("ln_mlp")
    with pytest.raises(InvalidEdgeError, match="'subject'"):
        evaluate(model, TASK, [{Edge("L0H0", "logits", position="subject")}], n=2)
    with pytest.raises(InvalidEdgeError, match="position 9"):
        evaluate(model, TASK, [{Edge("L0H0", "logits", position=9)}], n=2)
    with pytest.raises(InvalidEdgeError, match="have none"):
        evaluate(model, RandomTokens(seq_len=6), [{Edge("L0H0", "logits", position="end")}], n=2)
    with pytest.raises(InvalidEdgeError, match="L0H0->M9@end"):
        evaluate(model, TASK, [{"L0H0->M9@end"}], n=2)


# --- edge attribution per position -------------------------------------------------------------------------------
METHODS = ("eap", "eap_ig_inputs", "eap_ig_activations", "eap_ig_stagewise")


def graphs(model, method, n=3):
    options = dict(method=method, steps=2)
    return (EdgeAttribution(**options).run(model, TASK, n=n),
            {kind: EdgeAttribution(**options, positions=kind).run(model, TASK, n=n) for kind in ("tokens", "spans")})


@pytest.mark.parametrize("method", METHODS)
def test_summed_over_positions_the_positional_graph_is_the_plain_graph(method):
    model = toy("rms_rotary_gqa_mlp", seed=5)
    plain, positional = graphs(model, method)
    for kind, graph in positional.items():
        assert graph.meta["positions"] == {"kind": kind, "labels": [str(p) for p in range(6)] if kind == "tokens"
                                           else list(SPANS)}
        assert graph.nx.number_of_edges() == plain.nx.number_of_edges()
        for u, v, data in plain.nx.edges(data=True):
            mine = graph.nx.edges[u, v]
            assert mine["score"] == pytest.approx(data["score"], rel=1e-9, abs=1e-10), (kind, u, v)
            assert sum(mine["positions"].values()) == pytest.approx(mine["score"], rel=1e-12, abs=1e-14)
            for i in "qkv":
                if f"score_{i}" in data:
                    assert mine[f"score_{i}"] == pytest.approx(data[f"score_{i}"], rel=1e-9, abs=1e-10)
                    assert mine[f"score_{i}"] == sum(mine[f"positions_{i}"].values())  # the score is their sum
        for node in plain.heads() + plain.mlps():
            assert graph.nx.nodes[node]["score"] == pytest.approx(plain.nx.nodes[node]["score"], rel=1e-9, abs=1e-10)
        # only the read-out token reaches the logits, and the last layer's queries matter there alone
        read_out = "5" if kind == "tokens" else "end"
        for u, v, data in graph.nx.edges(data=True):
            key = "positions" if v == "logits" else "positions_q" if v.startswith("L1H") else None
            if key:
                assert all(value == 0 or label == read_out for label, value in data[key].items()), (u, v)
                assert data[key][read_out] != 0


def test_span_scores_are_token_scores_gathered_prompt_by_prompt():
    """The spans of each prompt differ: measured on the batch, each edge's span values are the mean over prompts of
    that prompt's own per-token values (measured alone) summed over the tokens of each span."""
    model = toy("ln_mlp", seed=2)
    with session(model):
        batch = prompts(model, TASK, 3, 0)
    spans = EdgeAttribution(method="eap", positions="spans").measure(model, TASK, batch).values
    expected = torch.zeros_like(spans)
    for i in range(batch.size):
        alone = EdgeAttribution(method="eap", positions="tokens").measure(model, TASK, batch.rows(range(i, i + 1)))
        for p in range(batch.clean.shape[1]):
            expected[:, :, int(batch.spans[i, p])] += alone.values[:, :, p] / batch.size
    torch.testing.assert_close(spans, expected, rtol=1e-9, atol=1e-12)
    assert (spans.abs().sum((0, 1)) > 0).sum() >= 3  # several spans carry scores


def test_positional_selection_json_and_typed_errors(tmp_path):
    model = toy("ln_mlp", seed=1)
    plain, positional = graphs(model, "eap", n=2)
    graph = positional["spans"]
    assert HeadGraph.from_json(graph.to_json(tmp_path / "g.json")) == graph
    scored = graph.scored_edges(positional=True)
    assert len(scored) == len(plain.scored_edges()) * len(SPANS)
    assert {e.position for e, _ in scored} == set(SPANS)
    circuit = graph.circuit(k=40, by="absolute", positional=True)
    assert circuit and all(e.position in SPANS for e in circuit)
    top = sorted(scored, key=lambda item: abs(item[1]), reverse=True)[:40]
    assert circuit <= {e for e, _ in top}  # the top 40, pruned
    total = graph.edge_total() * len(SPANS)
    assert graph.circuit(fraction=0.2, by="absolute", positional=True) == \
        graph.circuit(k=int(0.2 * total), by="absolute", positional=True)
    tokens = positional["tokens"].circuit(k=30, by="signed", positional=True)
    assert all(isinstance(e.position, int) for e in tokens)
    grown = graph.circuit(k=20, by="absolute", positional=True, greedy=True)
    assert grown and all(e.position in SPANS for e in grown)
    assert any(e.receiver.name == "logits" for e in grown)  # grown from the read-out
    result = evaluate(model, TASK, [circuit, tokens, grown], n=2)  # what the graph chose, the evaluation reads
    assert len(set(result.metrics)) == 3
    with pytest.raises(InvalidOptionError, match="no scores per position"):
        plain.circuit(k=3, by="absolute", positional=True)
    with pytest.raises(InvalidOptionError, match="positions='rows'"):
        EdgeAttribution(positions="rows")
    with pytest.raises(InvalidBatchError, match="'random_tokens'"):
        EdgeAttribution(positions="spans").run(model, RandomTokens(seq_len=6), n=2)
    # MIB's JSON has no positions: the plain scores go there (ours read back whole); a positional circuit is refused
    path = graph.to_mib(tmp_path / "mib.json", d_model=model.cfg.d_model)
    assert HeadGraph.from_mib(path) == graph
    written = json.loads(path.read_text())["edges"]
    assert {name: e["score"] for name, e in written.items()} == pytest.approx(
        {mib_edge_name(edge): score for edge, score in plain.scored_edges()}, abs=1e-6)
    with pytest.raises(InvalidEdgeError, match="no positions.*@"):
        graph.to_mib(tmp_path / "mib.json", circuit=circuit, d_model=model.cfg.d_model)
    graph.to_mib(tmp_path / "mib.json", circuit={edge.plain for edge in circuit}, d_model=model.cfg.d_model)
    assert read_circuit(tmp_path / "mib.json") == {edge.plain for edge in circuit}


# --- spans from tasks --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random Hugging Face Llama with a tokenizer of one token per word (BOS first)."""
    return models.load(save_tiny_llama(tmp_path_factory.mktemp("llama") / "model"))


ROW = {"clean": "When Mary and John went to the store , John gave an email to",  # 15 tokens with BOS
       "corrupted": "When Mary and John went to the store , Paul gave an email to", "answer": " Mary", "foil": " John"}
SHORTER = {"clean": "Then Anna and Lisa went to the park , Lisa gave to",  # 13 tokens with BOS
           "corrupted": "Then Anna and Lisa went to the park , Jane gave to", "answer": " Anna", "foil": " Lisa"}


def test_prompt_records_give_spans_by_position_or_per_token_and_auto_circuits_word_idxs(llama, tmp_path):
    labels = [None] * 13
    labels[2], labels[4], labels[10], labels[12] = "IO", "S1", "S2", "end"
    task = tasks.prompts([{**ROW, "spans": {"IO": 2, "S1": 4, "S2": 10, "end": 14}}, {**SHORTER, "spans": labels}])
    batch = task.batch(llama, n=2, seed=0)
    batch.validate(llama)
    assert batch.span_names == ("IO", "S1", "S2", "end", "other")
    for i in range(2):
        for name, word in (("IO", " Mary" if batch.position[i] == 14 else " Anna"), ("end", " to")):
            at = (batch.spans[i] == batch.span_names.index(name)).nonzero()[:, 0].tolist()
            assert len(at) == 1 and tokens.pieces(llama, [int(batch.clean[i, at[0]])])[0].strip() == word.strip()
        assert (batch.spans[i, int(batch.position[i]) + 1:] == batch.span_names.index("other")).all()  # padding
    # auto-circuit's word_idxs count tokens without the BOS, and its IOI files give "IO+1" and "S1-1" one token
    path = tmp_path / "ac.json"
    path.write_text(json.dumps({"word_idxs": {"IO": 1, "IO+1": 2, "S1-1": 2, "end": 13}, "prompts": [
        {"clean": ROW["clean"], "corrupt": ROW["corrupted"], "answers": [" Mary"], "wrong_answers": [" John"]}]}))
    with pytest.warns(UserWarning, match="'S1-1' \\(kept by 'IO\\+1'\\)"):
        from_file = tasks.prompts(path).batch(llama, n=1, seed=0)
    assert from_file.span_names == ("IO", "IO+1", "end", "other")
    named = {from_file.span_names[int(i)]: p for p, i in enumerate(from_file.spans[0]) if int(i) != 3}
    assert named == {"IO": 2, "IO+1": 3, "end": 14}  # BOS first: one token later than auto-circuit counts
    assert tokens.pieces(llama, [int(from_file.clean[0, 2])])[0].strip() == "Mary"


def test_word_spans_label_every_token_of_each_word(llama):
    """{name: word index} (whitespace-separated words of the clean prompt) gives the batch that token positions give;
    the BOS is not a word."""
    by_tokens = tasks.prompts([{**ROW, "spans": {"IO": 2, "S1": 4, "S2": 10, "end": 14}}]).batch(llama, n=1, seed=0)
    by_words = tasks.prompts([{**ROW, "word_spans": {"IO": 1, "S1": 3, "S2": 9, "end": 13}}]).batch(llama, n=1, seed=0)
    assert by_words.span_names == by_tokens.span_names and torch.equal(by_words.spans, by_tokens.spans)
    with pytest.raises(PromptFileError, match="record 0: word_spans puts 'end' at word 14; the clean prompt has 14"):
        tasks.prompts([{**ROW, "word_spans": {"end": 14}}]).batch(llama, n=1, seed=0)
    with pytest.raises(PromptFileError, match="both spans and word_spans"):
        tasks.prompts([{**ROW, "spans": {"IO": 2}, "word_spans": {"IO": 1}}])


def test_bad_spans_in_prompt_records_are_typed_errors_naming_the_row(llama):
    with pytest.raises(PromptFileError, match="record 0: spans label 3 tokens; the clean prompt is 15"):
        tasks.prompts([{**ROW, "spans": ["a", "b", None]}]).batch(llama, 1, 0)
    with pytest.raises(PromptFileError, match="record 0: span 'end' at token 15"):
        tasks.prompts([{**ROW, "spans": {"end": 15}}]).batch(llama, 1, 0)
    with pytest.raises(PromptFileError, match="record 1: no spans"):
        tasks.prompts([{**ROW, "spans": {"end": 14}}, SHORTER])
    with pytest.raises(PromptFileError, match="record 0: spans is"):
        tasks.prompts([{**ROW, "spans": {"end": -1}}])


def test_the_shipped_ioi_set_and_induction_declare_their_spans(induction, induction_model):
    from tasks import ioi

    task = tasks.prompts(ioi.DATA)
    rows = [json.loads(line) for line in ioi.DATA.read_text().splitlines()]
    assert all(pair.spans == row["meta"]["positions"] for pair, row in zip(task.pairs, rows))
    assert set(task.pairs[0].spans) == {"IO", "S1", "S1+1", "S2", "end"}
    batch = induction.batch(induction_model, 16, 0)
    batch.validate(induction_model)
    rows_ = torch.arange(16)
    at = {name: (batch.spans == i).int().argmax(1) for i, name in enumerate(batch.span_names) if name != "other"}
    assert (at["end"] == batch.position).all()
    assert (batch.clean[rows_, at["repeated"]] == batch.clean[rows_, at["end"]]).all()  # the token the read-out repeats
    assert (batch.clean[rows_, at["next"]] == batch.answer).all() and (at["next"] == at["repeated"] + 1).all()
    graph = EdgeAttribution(method="eap", positions="spans").run(induction_model, induction, n=8)
    assert graph.meta["positions"]["labels"] == ["repeated", "next", "end", "other"]
    assert graph.circuit(k=10, by="absolute", positional=True)


def test_chunked_prompts_give_the_same_positional_scores():
    model = toy("ln_mlp", seed=4)
    whole = EdgeAttribution(method="eap_ig_inputs", steps=2, positions="spans").run(model, TASK, n=5)
    chunked = EdgeAttribution(method="eap_ig_inputs", steps=2, positions="spans", memory_mb=0.01).run(model, TASK, n=5)
    for u, v, data in whole.nx.edges(data=True):
        assert chunked.nx.edges[u, v]["positions"] == pytest.approx(data["positions"], rel=1e-9, abs=1e-12)


def test_a_bad_position_is_refused_before_any_forward_pass(monkeypatch):
    from circuits.evaluation import faithfulness

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the bad position was refused")

    monkeypatch.setattr(faithfulness, "prepare", no_pass)
    with pytest.raises(InvalidEdgeError, match="'subject'"):
        evaluate(toy("ln_mlp"), TASK, [{Edge("L0H0", "logits", position="subject")}], n=2)


# --- path patching per position --------------------------------------------------------------------------------
def test_path_patching_per_token_is_patching_at_that_token_alone_and_sums_into_the_logits():
    """Each token's value of an edge is path patching with the sender patched at that token only (itself checked
    against the literal loop in test_path_patching); the edge's score stays the whole edge patched. Into the logits
    only the read-out token matters per prompt, so there the per-token values add up to the score exactly."""
    model = toy("ln_mlp", seed=4)
    senders = ("embed", "L0H1", "M0")
    with session(model):
        batch = prompts(model, TASK, 3, 0)
    per_token = PathPatching(senders=senders, positions="tokens").measure(model, TASK, batch)
    graph = PathPatching(senders=senders, positions="tokens").graph(model, per_token)
    assert graph.meta["positions"]["kind"] == "tokens" and graph.meta["positions"]["labels"] == [str(p) for p in range(6)]
    plain = PathPatching(senders=senders).run(model, TASK, n=3, seed=0)
    for p in range(6):
        alone = PathPatching(senders=senders, positions=(p,)).run(model, TASK, n=3, seed=0)
        for u, v, data in graph.nx.edges(data=True):
            assert data["positions"][str(p)] == pytest.approx(alone.nx.edges[u, v]["score"], abs=1e-9), (p, u, v)
            for i in "qkv":
                if f"positions_{i}" in data:
                    assert data[f"positions_{i}"][str(p)] == pytest.approx(alone.nx.edges[u, v][f"score_{i}"], abs=1e-9)
    for u, v, data in graph.nx.edges(data=True):
        assert data["score"] == pytest.approx(plain.nx.edges[u, v]["score"], abs=1e-9)
        if v == "logits":
            assert sum(data["positions"].values()) == pytest.approx(data["score"], abs=1e-9)
    assert any(abs(sum(d["positions"].values()) - d["score"]) > 1e-6 for _, v, d in graph.nx.edges(data=True)
               if v != "logits")  # elsewhere patching at several tokens interacts: the sum is not the score


def test_path_patching_per_span_equals_the_literal_loop_with_each_prompts_own_tokens():
    model = toy("rms_rotary_gqa_mlp", seed=6)
    engine = PathPatching(senders=("embed", "L0H2"), receivers=("L1H1", "M1", "logits"), positions="spans")
    with session(model):
        batch = prompts(model, TASK, 3, 1)
    values = engine.measure(model, TASK, batch).values
    reference = {"L1H1": (1, 1), "M1": MLP(1), "logits": "logits"}
    for sender, loop_sender in (("embed", "embed"), ("L0H2", (0, 2))):
        for receiver, loop_receiver in reference.items():
            for s, span in enumerate(SPANS):
                where = batch.spans == s
                combos = [("q",), ("k",), ("v",), ("q", "k", "v")] if receiver == "L1H1" else [("q", "k", "v")]
                literal = path_metrics(model, TASK, batch, [loop_sender], loop_receiver, combos, positions=where)
                for combo in combos:
                    key = ("+".join(combo) if receiver == "L1H1" else "") + f"@{span}"
                    assert values[(sender, receiver)][key] == pytest.approx(literal[combo], abs=1e-9), (sender, receiver, key)


def test_path_patching_positions_are_checked():
    with pytest.raises(InvalidOptionError, match="'words'"):
        PathPatching(positions="words")
    with pytest.raises(InvalidBatchError, match="random_tokens"):
        PathPatching(positions="spans").run(toy("ln_mlp"), RandomTokens(seq_len=6), n=2)


# --- CD-T per position ------------------------------------------------------------------------------------------
def test_cdt_per_span_is_each_prompts_own_tokens_of_the_span_as_the_source():
    """A head's value at a span is CD-T's node formula with the head's z at that prompt's tokens of the span alone as
    the source (`decompose` with (head, position) sources, prompt by prompt); head -> head shares likewise; the plain
    scores are the plain run's."""
    from circuits.engines import CDT
    from circuits.engines.cdt import decompose

    model = toy("ln_mlp", seed=8)
    with session(model):
        batch = prompts(model, TASK, 3, 2)
    engine = CDT(positions="spans", receiver_count=2)
    measured = engine.measure(model, TASK, batch)
    graph = engine.graph(model, measured)
    plain = CDT(receiver_count=2).graph(model, CDT(receiver_count=2).measure(model, TASK, batch))
    assert graph.meta["positions"]["labels"] == list(SPANS)
    for u, v, data in plain.nx.edges(data=True):
        assert graph.nx.edges[u, v]["score"] == pytest.approx(data["score"], abs=1e-9)
    z = {}
    for name, inputs in (("clean", batch.clean), ("corrupted", batch.corrupted)):
        sites = [f"blocks.{layer}.attn.hook_z" for layer in range(2)]
        with torch.no_grad(), hooks.attached(model, [(s, lambda t, hook, s=s: z.__setitem__((name, s), t.detach()))
                                                     for s in sites]):
            model(inputs)
    z_corrupted = torch.stack([z["corrupted", f"blocks.{layer}.attn.hook_z"] for layer in range(2)], dim=1)
    gap = measured.clean - measured.corrupted
    receiver = next(r for _, r in graph.nx.edges() if r != "logits")
    layer, r_head = int(receiver[1]), int(receiver[3])
    for head in ("L0H1", "L1H2"):
        for s, span in enumerate(SPANS):
            node, share = 0.0, 0.0
            for i in range(batch.size):
                tokens_i = [p for p in range(batch.clean.shape[1]) if batch.spans[i, p] == s]
                rows = batch.rows(range(i, i + 1))
                parts = decompose(model, rows.clean, [[(head, p) for p in tokens_i]], z_corrupted[i:i + 1],
                                  readout=rows.position)
                total = TASK.metric((parts.rel[0] + parts.irrel[0]), rows)
                node += float(TASK.metric(parts.irrel[0], rows) - total) / batch.size
                if head == "L0H1":
                    z_i = {k: z[k][i, int(rows.position)] for k in z}
                    change = (z_i["clean", f"blocks.{layer}.attn.hook_z"] - z_i["corrupted", f"blocks.{layer}.attn.hook_z"])[r_head]
                    share += float(parts.z_rel[layer][0, 0, r_head] @ change)
            assert graph.nx.edges[head, "logits"]["positions"][span] == pytest.approx(-node / gap, abs=1e-6), (head, span)
            if head == "L0H1":
                all_changes = sum(
                    float(((z["clean", f"blocks.{layer}.attn.hook_z"] - z["corrupted", f"blocks.{layer}.attn.hook_z"])
                           [j, int(batch.position[j]), r_head]).pow(2).sum()) for j in range(batch.size))
                assert graph.nx.edges[head, receiver]["positions"][span] == pytest.approx(share / all_changes, abs=1e-6)


def test_the_cli_takes_positions_as_an_engine_option_and_prints_edges_at_one_position(tmp_path, capsys):
    from analyses import cli

    code = cli.main(["discover", "--task", "induction", "--engine", "edge_attribution", "--option", "method=eap",
                     "--option", "positions=spans", "--n", "4", "--top", "3", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 0 and "top edges at one position (spans" in printed
    table = printed.split("top edges at one position")[1].splitlines()[3:6]
    assert len(table) == 3 and all("@" in row for row in table)
    graph = HeadGraph.from_json(tmp_path / "graph.json")
    assert graph.meta["positions"]["labels"] == ["repeated", "next", "end", "other"]


# --- activation patching per position ----------------------------------------------------------------------------
def test_activation_patching_per_span_is_the_head_patched_at_each_prompts_tokens_of_the_span():
    """A head's value at a span: the corrupted run with the head's z set to its clean value at each prompt's own
    tokens of the span, written as plain hooks; at a token it is the per-position score TransformerLens's own
    patching checks (`per_position`); the scores are the plain run's."""
    from circuits import forward
    from circuits.engines import ActivationPatching
    from tests.references import activations, metric_mean

    model = toy("ln_mlp", seed=9)
    with session(model):
        batch = prompts(model, TASK, 3, 3)
    spans = ActivationPatching(positions="spans").graph(model, ActivationPatching(positions="spans").measure(
        model, TASK, batch))
    tokens = ActivationPatching(positions="tokens", per_position=True).run(model, TASK, n=3, seed=3)
    plain = ActivationPatching().run(model, TASK, n=3, seed=3)
    assert spans.meta["positions"]["labels"] == list(SPANS)
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(2)]
    clean = activations(model, batch.clean, z_names)
    m_clean = metric_mean(TASK, forward.logits(model, batch.clean, batch.position), batch)
    m_corrupted = metric_mean(TASK, forward.logits(model, batch.corrupted, batch.position), batch)
    for head in ("L0H3", "L1H1"):
        layer, h = int(head[1]), int(head[3])
        assert spans.nx.edges[head, "logits"]["score"] == pytest.approx(plain.nx.nodes[head]["score"], abs=1e-9)
        per_token = tokens.nx.edges[head, "logits"]["positions"]
        assert list(per_token.values()) == pytest.approx(tokens.nx.nodes[head]["position_scores"], abs=1e-9)
        for s, span in enumerate(SPANS):
            where = (batch.spans == s)[:, :, None]

            def patch(z, hook, where=where):
                z = z.clone()
                z[:, :, h] = torch.where(where, clean[z_names[layer]][:, :, h], z[:, :, h])
                return z

            with torch.no_grad(), hooks.attached(model, [(z_names[layer], patch)]):
                patched = metric_mean(TASK, forward.logits(model, batch.corrupted, batch.position), batch)
            expected = (patched - m_corrupted) / (m_clean - m_corrupted)
            assert spans.nx.edges[head, "logits"]["positions"][span] == pytest.approx(expected, abs=1e-6), (head, span)


def test_positional_faithfulness_curves_evaluate_edges_at_positions_and_random_ones():
    from circuits.evaluation import curves

    model = toy("ln_mlp", seed=1)
    graph = EdgeAttribution(method="eap", positions="spans").run(model, TASK, n=3)
    result = curves.edge_curves(model, TASK, graph, n=3, fractions=(0.01, 0.1, 1.0), draws=2, positional=True)
    assert result.total_edges == len(nodes.all_edges(model)) * len(SPANS)
    curve = result.curves["edge_attribution"]
    assert curve.absolute[-1] == pytest.approx(1.0) and curve.signed[-1] <= 1.0 + 1e-9  # every edge at every span
    chosen = graph.circuit(fraction=0.1, by="absolute", positional=True)
    assert curve.edges_absolute[1] == len(chosen) and all(e.position in SPANS for e in chosen)
    assert curve.absolute[1] == pytest.approx(evaluate(model, TASK, [chosen], n=3).faithfulness[0], abs=1e-9)
    with pytest.raises(InvalidOptionError, match="no scores per position"):
        curves.edge_curves(model, TASK, EdgeAttribution(method="eap").run(model, TASK, n=3), n=3, positional=True)


@pytest.mark.parametrize("name", ["few_shot", "icl_regression", "regular_languages"])
def test_the_other_built_in_tasks_declare_spans_and_edge_attribution_sums_over_them(name):
    """Few-shot, ICL regression and regular languages mark spans (`tasks.spans`) where the prompts' roles are, on
    their shipped models; edge attribution per span sums to the plain graph."""
    task = tasks.get(name)
    model = task.default_model()
    batch = task.batch(model, 16, 0)
    batch.validate(model)
    rows = torch.arange(16)
    at = lambda span: batch.spans == batch.span_names.index(span)  # noqa: E731
    if name == "few_shot":
        sample = task.sample(16, torch.Generator().manual_seed(0), held_out=True)  # what `batch` drew
        answer_label = 1 + 2 * sample.which
        assert (at("answer_label")[rows, answer_label]).all() and (at("foil_label")[rows, 4 - answer_label]).all()
        assert (at("answer_exemplar")[rows, answer_label - 1]).all() and at("query")[:, 4].all()
        _, labels, positions = task.world()
        label_at = lambda prompts, where: prompts[rows, where] - positions[where]  # noqa: E731
        assert torch.allclose(label_at(batch.clean, answer_label), labels[batch.answer], atol=1e-6)
        assert torch.allclose(label_at(batch.corrupted, answer_label), labels[batch.foil], atol=1e-6)
    elif name == "icl_regression":
        assert batch.span_names == ("context", "query")
        assert at("query")[rows, batch.position].all() and at("query").sum() == 16
    else:
        assert at("end")[rows, batch.position].all() and at("end").sum() == 16
        shared = at("ngram") | at("end")
        assert (at("ngram").sum(1) == task.kept - 1).all()
        assert (batch.clean[shared] == batch.corrupted[shared]).all()
        assert ((batch.clean != batch.corrupted) & at("context")).any(1).all()  # the in-context statistics differ
        assert not (at("other") & (torch.arange(batch.clean.shape[1]) <= batch.position[:, None])).any()
    spans = EdgeAttribution(method="eap", positions="spans").run(model, task, n=16)
    plain = EdgeAttribution(method="eap").run(model, task, n=16)
    assert spans.meta["positions"]["labels"] == list(batch.span_names)
    for sender, receiver, data in plain.nx.edges(data=True):
        by_span = spans.nx.edges[sender, receiver]["positions"]
        assert sum(by_span.values()) == pytest.approx(data["score"], abs=1e-6)
