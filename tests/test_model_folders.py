"""`circuits.models.load` on local folders, offline: a Hugging Face checkpoint folder is read as it is, and a folder
holding a GGUF file is converted once and then read from the cache, as the bundled SmolLM2 is. A tiny random Llama
(`tests.tiny_hf`) stands in for both (the GGUF reader itself is transformers'; here it is replaced by the tiny
checkpoint, so the test checks our conversion cache, not the dequantisation)."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits import models
from tests.tiny_hf import save_tiny_llama


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("hf") / "model")


def test_a_checkpoint_folder_loads_offline_and_computes_what_transformers_does(folder):
    from transformers import AutoModelForCausalLM

    model = models.load(str(folder))
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens = circuits.tokens.encode(model, "When Mary and John went to the store")
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits
        assert torch.allclose(model(torch.tensor([tokens])), expected, atol=1e-4)
    assert model.cfg.n_layers == 2 and model.tokenizer is not None


def test_a_gguf_folder_is_converted_once_then_read_from_the_cache(folder, tmp_path, monkeypatch):
    import transformers

    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    gguf_folder = tmp_path / "gguf"
    gguf_folder.mkdir()
    (gguf_folder / "tiny.Q4_0.gguf").write_bytes(b"GGUF stand-in")
    conversions = []
    auto_model, auto_tokenizer = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def from_gguf(original):
        def load(path, *args, **kwargs):
            if "gguf_file" not in kwargs:
                return original(path, *args, **kwargs)
            assert kwargs["gguf_file"] == "tiny.Q4_0.gguf" and str(path) == str(gguf_folder.resolve())
            conversions.append(kwargs["gguf_file"])
            return original(folder, **{k: v for k, v in kwargs.items() if k != "gguf_file"})
        return load

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_gguf(auto_model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_gguf(auto_tokenizer))
    first = models.load(gguf_folder)
    assert len(conversions) == 2  # the tokenizer and the model, once
    [entry] = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert entry.name.startswith("gguf-tiny-Q4_0-") and (entry / "weights.pt").exists()
    second = models.load(gguf_folder / "tiny.Q4_0.gguf")  # the file itself works too
    assert len(conversions) == 2  # read from the cache: no conversion
    tokens = torch.tensor([circuits.tokens.encode(first, "When Mary and John went")])
    with torch.no_grad():
        assert torch.equal(first(tokens), second(tokens))
    with pytest.raises(circuits.errors.InvalidOptionError, match="takes only device="):
        models.load(gguf_folder, n_devices=2)
