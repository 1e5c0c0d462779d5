"""Shipped default models: each fits the current training recipe (else `make models` was not run after a change to
how it is trained), loads without training, and the mechanism behind them (`models.TrainedToy`) prefers shipped
weights, refuses stale or damaged ones, and retrains on request."""

from __future__ import annotations

import ast
import json
import textwrap
import warnings
from dataclasses import asdict, replace

import pytest
import torch

from circuits import models
from circuits._trained import _canonical
from circuits.errors import DamagedCacheWarning, StaleWeightsWarning
from tasks import shipped

DEFAULTS = {d.name: d for d in shipped.defaults()}
# Defaults whose weights are not shipped yet: their first use still trains. Ship one with
# `python -m analyses.models --only NAME`, then remove it here. (Every default is shipped today.)
NOT_YET_SHIPPED: set[str] = set()
TINY = models.ToyConfig(n_layers=1, n_heads=2, d_model=8, d_vocab=6, name="tiny")


def refuse(module):
    raise AssertionError("trained, but shipped weights were expected")


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_shipped_weights_fit_the_current_recipe(name):
    """Fails when a default's recipe (config, training spec or training code) changed and its shipped weights were
    not regenerated: run `make models` (or `python -m analyses.models --only NAME`)."""
    trained = DEFAULTS[name].training(False)
    record = trained.record()
    if name in NOT_YET_SHIPPED:
        assert record is None, f"{name} is shipped now: remove it from NOT_YET_SHIPPED"
        return
    assert record is not None, f"{name} is not shipped: run `python -m analyses.models --only {name}`"
    assert record["key"] == trained.key(), (
        f"{name}: shipped weights were trained by recipe {record['key']}, the current recipe is {trained.key()}; "
        f"run `python -m analyses.models --only {name}` (make models) and commit tasks/data/models")
    assert record["config"] == json.loads(json.dumps(asdict(trained.config)))


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_first_use_reads_the_shipped_weights_without_training(name, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))  # an empty cache: nothing to read but the package data
    trained = DEFAULTS[name].training(False)
    if name in NOT_YET_SHIPPED:
        pytest.skip(f"{name} is not shipped yet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither stale nor damaged
        model = trained.from_shipped()
    assert model is not None and list(tmp_path.iterdir()) == []
    assert model.cfg.n_heads == trained.config.n_heads and model.cfg.n_layers == trained.config.n_layers


def test_the_headline_numbers_of_a_shipped_model_reproduce(tmp_path, monkeypatch):
    """The shipped induction model gives the copying accuracy recorded when it was shipped (and far above chance)."""
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    default = DEFAULTS["induction"]
    trained = default.training(False)
    numbers = default.headline(trained.from_shipped())
    assert numbers == pytest.approx(trained.record()["headline"], abs=1e-6)
    assert numbers["copying_accuracy"] > 0.5  # 1/48 by chance


def tiny(tmp_path, value, calls, **spec):
    def train(module):
        calls.append(value)
        with torch.no_grad():
            module.head.weight.fill_(value)
    return models.TrainedToy(TINY, train, spec or {"steps": 1}, tmp_path / "shipped")


def test_shipped_weights_are_preferred_and_retrain_trains_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    calls = []
    trained = tiny(tmp_path, 0.25, calls)
    trained.load()
    weights = trained.ship({"headline": {"value": 0.25}})
    assert weights.name == "tiny.safetensors" and trained.record()["headline"] == {"value": 0.25}
    (tmp_path / "cache").joinpath(trained.cache_path().name).unlink()  # only the shipped copy is left
    model = trained.load()
    assert calls == [0.25] and torch.all(model.W_U == 0.25)
    assert not trained.cache_path().exists()  # read from the package data, nothing written to the cache
    trained.load(retrain=True)
    assert calls == [0.25, 0.25] and trained.cache_path().exists()
    # models.cached is the same mechanism
    assert torch.all(models.cached(TINY, trained.train, shipped=tmp_path / "shipped", steps=1).W_U == 0.25)
    assert len(calls) == 2


def test_stale_shipped_weights_are_refused_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    calls = []
    old = tiny(tmp_path, 0.25, calls)
    old.load()
    old.ship()
    changed = tiny(tmp_path, 0.25, calls, steps=2)  # another training spec: another recipe hash
    with pytest.warns(StaleWeightsWarning, match=f"tiny.safetensors.*{old.key()}.*{changed.key()}.*make models"):
        model = changed.load()
    assert calls == [0.25, 0.25] and torch.all(model.W_U == 0.25)


def test_damaged_shipped_weights_are_refused_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    calls = []
    trained = tiny(tmp_path, 0.5, calls)
    trained.load()
    weights = trained.ship()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    with pytest.warns(DamagedCacheWarning, match="tiny.safetensors.*sha256"):
        assert trained.from_shipped() is None


def test_shipping_needs_trained_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="no cached weights for tiny"):
        tiny(tmp_path, 0.5, []).ship()


def test_the_recipe_hash_ignores_how_python_writes_empty_fields():
    """`ast.dump` of one source differs between Python versions (empty fields shown or not, fields added); the
    recipe hash must not, or users of another Python would train instead of loading the shipped weights."""
    tree = ast.parse(textwrap.dedent("""
        def train(module, steps=3):
            return [module for _ in range(steps)]
    """))
    function = tree.body[0]
    function.type_params = []  # as Python 3.12 parses it
    with_field = _canonical(tree)
    del function.type_params  # as Python 3.11 does
    assert _canonical(tree) == with_field
    function.returns = None
    assert _canonical(tree) == with_field
    function.name = "train_again"
    assert _canonical(tree) != with_field


def test_regular_languages_history_comes_with_its_shipped_weights(tmp_path, monkeypatch):
    """Without the cache's history file, `history()` reads the one recorded with shipped weights of its recipe."""
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shipped, "FOLDER", tmp_path / "shipped")
    from tasks.regular_languages import RegularLanguages

    task = RegularLanguages.quick()
    history = [{"step": 200, "loss": 2.0}, {"step": 400, "loss": 1.5}]
    (tmp_path / "shipped").mkdir()
    record = {"key": task.training(progress=False).key(), "history": history}
    (tmp_path / "shipped" / f"{task.model_config.name}.json").write_text(json.dumps(record))
    assert task.history() == history
    other = replace(task, recipe=replace(task.recipe, eval_every=100))  # another recipe: not its history
    assert other.history() is None
