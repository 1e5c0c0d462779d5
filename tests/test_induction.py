"""The induction task and its default model: an induction circuit, not a positional lookup."""

import pytest
import torch

import circuits
from analyses import cli
from tasks.induction import Induction


def test_prompts_hold_a_repeated_segment_and_a_resampled_first_occurrence(induction):
    p = induction.sample(50, torch.Generator().manual_seed(0))
    for b in range(50):
        f, s, n = p.first[b].item(), p.second[b].item(), p.length[b].item()
        assert induction.min_length <= n <= induction.max_length and f + n <= s and s + n <= induction.seq_len
        assert torch.equal(p.clean[b, f:f + n], p.clean[b, s:s + n])
        assert torch.equal(p.corrupted[b, f:f + n], p.y[b, :n])
        assert torch.equal(p.corrupted[b, s:], p.clean[b, s:])
        outside = torch.ones(induction.seq_len, dtype=torch.bool)
        outside[f:f + n] = outside[s:s + n] = False
        assert not torch.isin(p.clean[b, outside], torch.cat([p.x[b, :n], p.y[b, :n]])).any()


def test_batch_reads_out_inside_the_repeat(induction, random_model):
    batch = induction.batch(random_model, n=64, seed=3)
    rows = torch.arange(64)
    token = batch.clean[rows, batch.position]
    for b in range(64):  # the read-out token appeared earlier, followed by the answer
        earlier = (batch.clean[b, : batch.position[b]] == token[b]).nonzero()[:, 0]
        assert len(earlier) == 1 and batch.clean[b, earlier[0] + 1] == batch.answer[b]
        assert batch.corrupted[b, earlier[0] + 1] == batch.foil[b]


def test_default_model_copies(induction, induction_model):
    assert induction.copying_accuracy(induction_model) >= 0.9


def attention_scores(model, seed: int, length: int):
    """Mean previous-token and induction attention per head on prompts with segments of `length`, and
    the attention a uniform head would give (1 / number of visible positions, averaged)."""
    task = Induction(min_length=length, max_length=length)
    p = task.sample(48, torch.Generator().manual_seed(seed))
    _, cache = model.run_with_cache(p.clean)
    prev, induction = [], []
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, query, key]
        prev.append(pattern.diagonal(offset=-1, dim1=2, dim2=3).mean((0, 2)))
        rows = [pattern[b, :, p.second[b] + k, p.first[b] + k + 1] for b in range(48) for k in range(length - 1)]
        induction.append(torch.stack(rows).mean(0))
    queries = torch.stack([p.second[b] + k for b in range(48) for k in range(length - 1)]).float()
    return torch.stack(prev), torch.stack(induction), (1 / (queries + 1)).mean()


@pytest.mark.parametrize("length, seed", [(6, 0), (11, 1), (16, 2)])
def test_top_head_is_a_layer_1_induction_head_fed_by_a_previous_token_head(length, seed, induction,
                                                                            induction_model):
    graph = circuits.discover(induction_model, induction, n=32, seed=seed)
    (top, _), = graph.top(1, by="signed")
    layer, head = graph.nx.nodes[top]["layer"], graph.nx.nodes[top]["head"]
    assert layer == 1
    prev, ind, uniform = attention_scores(induction_model, seed, length)
    assert ind[layer, head] >= 0.25 and ind[layer, head] >= 5 * uniform
    assert prev[0].max() >= 0.3


def test_cli_discover_writes_graph_and_picture(tmp_path, capsys, induction_model):
    assert cli.main(["discover", "--task", "induction", "--out", str(tmp_path), "--n", "16"]) == 0
    out = capsys.readouterr().out
    assert "L1H" in out.split("rank")[1].splitlines()[2]  # the best row is a layer-1 head
    graph = circuits.HeadGraph.from_json(tmp_path / "graph.json")
    assert graph.meta["engine"] == "activation_patching" and graph.meta["task"] == "induction"
    assert (tmp_path / "graph.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_lists_and_refuses(capsys):
    assert cli.main(["tasks"]) == 0 and "induction" in capsys.readouterr().out
    assert cli.main(["engines"]) == 0 and "activation_patching" in capsys.readouterr().out
    assert cli.main(["discover", "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_cli_errors_come_before_the_run(tmp_path, capsys, monkeypatch):
    """Bad options are typed errors (exit 2, the value named) before any model is loaded or trained."""
    monkeypatch.setattr(Induction, "default_model", lambda self: pytest.fail("loaded a model before checking"))
    a_file = tmp_path / "taken"
    a_file.write_text("")
    assert cli.main(["discover", "--task", "induction", "--out", str(a_file)]) == 2
    assert f"--out '{a_file}' is a file" in capsys.readouterr().err
    assert cli.main(["discover", "--task", "induction", "--engine", "patchy", "--out", str(tmp_path)]) == 2
    assert "unknown engine 'patchy'" in capsys.readouterr().err
