"""Silent wrong results (issue 22), each now an error, a warning or a report line: a corrupted prompt of another token
length than its clean twin, sweep cells served stale after their prompts or weights changed, ``meta["n"]`` that is
not the number of prompts used, held-out prompts that are not held out, and errors that were not ours (a multi-token
answer tensor, a missing model path, a task given by name, a metric that averages over the batch, an unknown engine
option, a task module that fails to import)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

import circuits
import tasks
from circuits import PromptBatch, engines, models, tokens
from circuits.engines import kit
from circuits.errors import (InvalidOptionError, InvalidTaskError, MetricError, ModelNotFoundError,
                             MultiTokenAnswerError, PluginImportError, UnequalLengthError)
from tasks import facts
from tests.references import RandomTokens


def tiny():
    return models.toy(n_layers=2, n_heads=2, d_model=16, d_vocab=64, n_ctx=16, seed=3)


# --- unequal token lengths -----------------------------------------------------------------------------------------
def test_a_corrupted_prompt_longer_than_its_clean_twin_is_refused_naming_the_row():
    """Right-padding used to hide it: the row ran, read out at the clean prompt's last position."""
    clean, corrupted = [[1, 2, 3], [1, 4, 5, 6]], [[1, 7, 8], [1, 9, 10, 11, 12, 13]]
    with pytest.raises(UnequalLengthError, match=r"row 1: the clean prompt is 4 tokens and the corrupted one 6"):
        tokens.paired(clean, corrupted, [2, 3], [4, 5], pad=0)
    with pytest.raises(UnequalLengthError, match=r"ioi.jsonl line 2: the clean prompt is 4 tokens"):
        tokens.paired(clean, corrupted, [2, 3], pad=0, rows=["ioi.jsonl line 1", "ioi.jsonl line 2"])

    class Tokenizer:
        pad_token_id, eos_token_id = 0, 0

    with pytest.raises(UnequalLengthError, match="row 1"):  # the facts tasks pad through the same function
        facts.prompt_batch(type("Model", (), {"tokenizer": Tokenizer()})(), clean, corrupted, [2, 3], [4, 5])
    batch = tokens.paired([[1, 2, 3], [1, 4]], [[1, 7, 8], [1, 9]], [2, 3], pad=0)
    assert batch.position.tolist() == [2, 1] and batch.clean[1].tolist() == [1, 4, 0]


# --- sweeps: cells keyed also by what they ran on -------------------------------------------------------------------
@dataclass(frozen=True)
class FromFiles:
    """Random prompts whose seed offset, and a toy default model whose weights seed, are read from files: a user's
    task whose prompts change, and a model that is retrained, under the same name and options."""

    prompts_file: str
    weights_file: str
    name: str = "from_files"

    def batch(self, model, n, seed):
        return RandomTokens(seq_len=8).batch(model, n, seed + int(Path(self.prompts_file).read_text()))

    def metric(self, logits, batch):
        return RandomTokens().metric(logits, batch)

    def default_model(self):
        return models.toy(n_layers=2, n_heads=2, d_model=16, d_vocab=64, n_ctx=16,
                          seed=int(Path(self.weights_file).read_text()))


def test_a_sweep_reruns_cells_whose_prompts_or_weights_changed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    prompts_file, weights_file = tmp_path / "offset", tmp_path / "weights"
    prompts_file.write_text("0")
    weights_file.write_text("0")
    spec = {"tasks": [{"name": "tests.test_silent_results:FromFiles",
                       "options": {"prompts_file": str(prompts_file), "weights_file": str(weights_file)}}],
            "models": ["default"], "engines": ["activation_patching"], "n": 4}
    out = tmp_path / "out"
    first = circuits.sweep(spec, out, progress=False)
    [folder] = [p for p in out.iterdir() if p.is_dir()]
    before = circuits.HeadGraph.from_json(folder / "graph.json")
    recorded = json.loads((folder / "meta.json").read_text())["fingerprints"]
    assert first.ran and set(recorded) == {"prompts", "weights"}

    again = circuits.sweep(spec, out, progress=False)  # nothing changed: checked, not rerun
    assert not again.ran and again.skipped == first.ran and not again.stale

    prompts_file.write_text("7")  # the same task name and options, other prompts
    changed = circuits.sweep(spec, out, progress=False)
    assert changed.ran == first.ran and changed.stale == {folder.name: ["prompts"]}
    after = circuits.HeadGraph.from_json(folder / "graph.json")
    assert after.scores() != before.scores()
    assert json.loads((folder / "meta.json").read_text())["fingerprints"]["prompts"] != recorded["prompts"]

    weights_file.write_text("1")  # the same model entry, retrained
    assert circuits.sweep(spec, out, progress=False).stale == {folder.name: ["weights"]}
    # trusting done cells loads nothing and changes nothing
    prompts_file.write_text("8")
    trusted = circuits.sweep(spec, out, verify=False, progress=False)
    assert not trusted.ran and not trusted.stale


def test_fingerprints_follow_the_prompts_and_the_weights_exactly():
    from circuits.sweeps import fingerprint

    model = tiny()
    batch = RandomTokens(seq_len=8).batch(model, 4, 0)
    assert fingerprint.prompts(batch) == fingerprint.prompts(RandomTokens(seq_len=8).batch(model, 4, 0))
    assert fingerprint.prompts(batch) != fingerprint.prompts(replace(batch, answer=batch.answer.flip(0)))
    assert fingerprint.prompts(batch) != fingerprint.prompts(replace(batch, position=batch.position - 1))
    assert fingerprint.weights(model) == fingerprint.weights(tiny())
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert fingerprint.weights(model) != fingerprint.weights(tiny())


# --- meta["n"] ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sixteen:
    """A task with 16 prompts, whatever n is asked for."""

    name: str = "sixteen"

    def batch(self, model, n, seed):
        return RandomTokens(seq_len=8).batch(model, min(n, 16), seed)

    def metric(self, logits, batch):
        return RandomTokens().metric(logits, batch)


@pytest.mark.parametrize("engine_name", ["activation_patching", "cdt", "edge_attribution"])
def test_meta_n_records_the_prompts_used_and_fewer_than_asked_warns(engine_name):
    with pytest.warns(UserWarning, match="returned 16 prompts where 32 were asked for; the graph's meta records n=16"):
        graph = circuits.discover(tiny(), Sixteen(), engine=engine_name, n=32)
    assert graph.meta["n"] == 16


# --- held-out prompts that are not held out ------------------------------------------------------------------------
@dataclass(frozen=True)
class IgnoresSeed(Sixteen):
    name: str = "ignores_seed"

    def batch(self, model, n, seed):
        return super().batch(model, n, 0)


def test_compare_reports_held_out_prompts_that_are_not_held_out():
    model = tiny()
    for task, shared in ((IgnoresSeed(), 8), (Sixteen(), 0)):
        graphs = [circuits.discover(model, task, engine="activation_patching", n=8)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = circuits.compare(graphs, model, task, n=8, draws=2)
        assert result.shared_prompts == shared
        said = [str(w.message) for w in caught if "faithfulness prompts" in str(w.message)]
        if shared:
            assert "not held out: 8 of the 8 faithfulness prompts (seed 1)" in result.table()
            assert said and "not held out: the task 'ignores_seed' ignores seed" in said[0]
        else:
            assert "not held out" not in result.table() and not said


# --- errors that were not ours ---------------------------------------------------------------------------------------
def test_a_multi_token_answer_tensor_is_a_typed_error():
    logits = torch.randn(3, 10)
    with pytest.raises(MultiTokenAnswerError, match=r"answer holds 2 tokens per prompt \(shape \(3, 2\)\).*answer\[:, 0\]"):
        circuits.metrics.logit_difference(logits, torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(circuits.errors.InvalidBatchError, match="foil holds token 10, outside the vocabulary"):
        circuits.metrics.logit_difference(logits, torch.zeros(3, dtype=torch.long), torch.full((3,), 10))
    with pytest.raises(circuits.errors.InvalidBatchError, match="answer has dtype torch.float32"):
        circuits.metrics.answer_probability(logits, torch.zeros(3))


def test_a_missing_model_is_a_typed_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="model folder '/no/such/model' does not exist"):
        models.load("/no/such/model")
    with pytest.raises(ModelNotFoundError, match=r"'nobody-xyz/no-such-model'.*not in the local Hugging Face cache.*"
                                                 r"offline"):
        models.load("nobody-xyz/no-such-model")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(ModelNotFoundError, match=r"holds no model.*config.json.*\['notes.txt'\]"):
        models.load(tmp_path / "empty")
    assert isinstance(ModelNotFoundError("x"), OSError)  # code that caught the old OSError still does


def test_a_task_given_by_name_or_a_non_task_is_a_typed_error():
    with pytest.raises(InvalidTaskError, match=r"task 'induction' is a name; expected a task object, e.g. "
                                               r"tasks.get\('induction'\)"):
        circuits.discover(tiny(), "induction")
    with pytest.raises(InvalidTaskError, match=r"a int is not a task: it lacks \['name', 'batch', 'metric'\]"):
        circuits.discover(tiny(), 3)


@dataclass(frozen=True)
class Averaged(Sixteen):
    """A metric that averages over the batch (a scalar, not one value per prompt)."""

    name: str = "averaged"

    def metric(self, logits, batch):
        return super().metric(logits, batch).mean()


def test_a_metric_returning_a_scalar_names_the_users_n():
    with pytest.raises(MetricError, match=r"averaged.metric returned \(\) for 4 prompts; expected one value per prompt, "
                                          r"a tensor of shape \(4,\) \(here \d+ stacked copies"):
        circuits.discover(tiny(), Averaged(), n=4)


def test_an_unknown_engine_option_lists_the_valid_ones():
    with pytest.raises(InvalidOptionError, match="cdt has no option 'receivers_count'; expected some of: receiver_count"):
        engines.get("cdt", receivers_count=3)
    with pytest.raises(InvalidOptionError, match="edge_attribution has no option 'step'.*steps"):
        circuits.discover(tiny(), Sixteen(), engine="edge_attribution", step=3)


def test_a_task_module_that_fails_to_import_shows_the_real_error(tmp_path, monkeypatch):
    (tmp_path / "my_broken_tasks_xyz.py").write_text("import numpy\nraise ValueError('bad line 2')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="bad line 2"):  # not "unknown task": the module's own error
        tasks.get("my_broken_tasks_xyz:Task")
    with pytest.raises(PluginImportError, match="No module named 'nowhere_xyz'"):
        tasks.get("nowhere_xyz:Task")


# --- long runs say what they do ---------------------------------------------------------------------------------
def test_progress_bars_show_on_large_models_only_and_can_be_turned_off():
    large = torch.nn.Linear(5000, 5000)  # 25M parameters, above kit.PROGRESS_PARAMETERS
    assert not kit.progress(large, 3, "x").disable
    assert kit.progress(large, 3, "x", enabled=False).disable
    assert kit.progress(tiny(), 3, "x").disable
    from circuits.sweeps import EngineSpec

    quiet = EngineSpec("cdt", {"progress": False}).config()
    assert quiet == EngineSpec("cdt").config() and "progress" not in quiet["options"]  # not part of a cell's key
    for name in engines.for_trained_models():
        assert engines.get(name, progress=False).progress is False


def test_options_are_checked_before_the_model_loads(monkeypatch, capsys):
    from analyses import cli

    monkeypatch.setattr(tasks.Induction, "default_model", lambda self: pytest.fail("the model loaded"))
    for argv, words in ((["--option", "receiver_count=-1", "--engine", "cdt"], "receiver_count=-1"),
                        (["--option", "bogus=1"], "has no option 'bogus'")):
        assert cli.main(["discover", "--task", "induction", *argv]) == 2
        assert words in capsys.readouterr().err
