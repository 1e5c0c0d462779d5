"""The converted SmolLM2 copy (`models.bundled`) is kept only when it reproduces the model it was converted from,
and a damaged copy is reported and converted again. A tiny random Llama stands in for the GGUF model (the real
conversion, 15-45 s, is checked by the same code the first time `bundled()` runs on a machine)."""

from __future__ import annotations

import pytest
import torch

from circuits import models
from circuits.errors import DamagedCacheWarning, ModelNotFoundError


def tiny_llama(seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.slow
def test_kept_copy_reproduces_the_model_and_a_differing_one_is_not_kept(tmp_path, bundled_model, monkeypatch):
    tokenizer = bundled_model.tokenizer
    model = tiny_llama()
    probe = torch.tensor([tokenizer(models._PROBES[0])["input_ids"]])
    kept, kept_tokenizer = models._keep_converted(model, tokenizer, tmp_path / "copy")
    assert (tmp_path / "copy" / "weights.pt").exists() and kept is not model
    with torch.no_grad():
        assert torch.equal(kept(probe).logits, model(probe).logits)
    assert kept_tokenizer(models._PROBES[1])["input_ids"] == tokenizer(models._PROBES[1])["input_ids"]

    reread = models._read_converted
    def perturbed(path):  # a copy that reads back different weights
        hf_model, tok = reread(path)
        with torch.no_grad():
            hf_model.lm_head.weight.add_(1e-3)
        return hf_model, tok
    monkeypatch.setattr(models, "_read_converted", perturbed)
    with pytest.warns(UserWarning, match="differs from the GGUF model; not cached"):
        returned, _ = models._keep_converted(model, tokenizer, tmp_path / "other")
    assert returned is model and not (tmp_path / "other").exists()
    assert not list(tmp_path.glob("other.tmp*"))


def test_damaged_copy_is_reported_and_converted_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    converted = []
    monkeypatch.setattr(models, "_keep_converted", lambda m, t, path: converted.append(path) or (m, t))
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: "gguf tokenizer")
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: tiny_llama())
    models._bundled_hf()  # first call: nothing kept yet, so it converts
    (path,) = converted
    path.mkdir(parents=True)
    (path / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(DamagedCacheWarning, match="converting the GGUF again"):
        models._bundled_hf()
    assert converted == [path, path] and not path.exists()


def test_bundled_folder_is_the_kept_copy_or_a_typed_error(tmp_path, monkeypatch):
    """`bundled_folder` (the peers' benchmark loads SmolLM2 from it): the kept copy's folder; `ModelNotFoundError`
    when the conversion was not kept."""
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: "gguf tokenizer")
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: tiny_llama())
    monkeypatch.setattr(models, "_keep_converted", lambda m, t, path: (m, t))  # differs: nothing kept
    with pytest.raises(ModelNotFoundError, match="not kept"):
        models.bundled_folder()

    def keep(model, tokenizer, path):
        path.mkdir(parents=True)
        torch.save(model.state_dict(), path / "weights.pt")
        return model, tokenizer

    monkeypatch.setattr(models, "_keep_converted", keep)
    folder = models.bundled_folder()
    assert folder.parent == tmp_path and (folder / "weights.pt").exists()
