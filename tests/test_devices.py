"""Models spread over devices, without a GPU: every engine that reads a trained model gives the graph it gives
on one device, (1) on one or two GPUs simulated on the CPU (`tests/simulated_devices.py`: an op that mixes devices
raises, as CUDA does), also through `compare` and the toy tasks' own models, and (2) on a real accelerate
``device_map`` that offloads a layer to disk (its weights are meta placeholders, filled only while it runs), also
through a sweep. (3) runs on two real GPUs where a machine has them."""

from __future__ import annotations

import json
import os

import pytest
import torch

from circuits import engines, forward, models
from tests import simulated_devices as simulated
from tests.references import RandomTokens

TASK = RandomTokens(seq_len=8)
VARIANTS = [("activation_patching", {}), ("activation_patching", {"per_position": True}),
            ("path_patching", {"per_input": True}), ("path_patching", {"freeze_mlps": True, "per_input": False}),
            ("edge_attribution", {"method": "eap"}), ("edge_attribution", {"method": "eap_ig_inputs", "steps": 2}),
            ("edge_attribution", {"method": "eap_ig_activations", "steps": 2}), ("cdt", {"receiver_count": 2})]


def test_the_variants_cover_every_engine_that_reads_a_trained_model():
    assert {name for name, _ in VARIANTS} == set(engines.for_trained_models())


# --- (1) simulated GPUs ---------------------------------------------------------------------------------
def toy():
    return models.toy(n_layers=2, n_heads=2, d_model=16, d_vocab=32, n_ctx=16, attn_only=False, d_mlp=32, seed=11)


def test_the_simulation_refuses_what_cuda_refuses():
    model = simulated.on_gpus(toy())
    with simulated.SimulatedDevices():
        tokens = torch.zeros(1, 4, dtype=torch.long).to("cuda:0")
        assert str(model(tokens).device) == "cuda:0"  # blocks move their inputs; the output comes back
        resid = forward.embed(model, tokens)
        assert str(resid.device) == "cuda:0" and str(forward.run_blocks(model, resid, 0, 1).device) == "cuda:0"
        assert str(forward.run_blocks(model, resid, 1, 2).device) == "cuda:1"
        with pytest.raises(simulated.WrongPlacement, match=r"cuda:0.*cuda:1"):
            model.blocks[1].ln2(resid)  # a sub-module called directly: its weights on cuda:1, the input on cuda:0
        with pytest.raises(simulated.WrongPlacement, match=r"cpu.*cuda:0"):
            torch.zeros(3) + torch.ones(3).to("cuda:0")
        torch.zeros(3, device="cuda:1").copy_(torch.ones(3))  # copies, CPU scalars and CPU indices cross devices
        assert str((resid * torch.tensor(2.0)).device) == "cuda:0"
        assert str(resid[torch.tensor([0])].device) == "cuda:0"


PLACEMENTS = {"one GPU": ("cuda:0", 1), "two GPUs, tied unembedding": ("cuda:0", 2), "two GPUs": ("cuda:1", 2)}


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("name, options", VARIANTS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS])
def test_every_engine_on_simulated_gpus(name, options, placement):
    engine = engines.get(name, **options)
    expected = engine.run(toy(), TASK, n=2, seed=0)
    unembedding, gpus = PLACEMENTS[placement]
    model = simulated.on_gpus(toy(), unembedding, gpus)
    with simulated.SimulatedDevices():
        assert str(next(model.blocks[1].parameters()).device) == f"cuda:{1 % gpus}"
        graph = engine.run(model, TASK, n=2, seed=0)
    assert graph == expected


@pytest.mark.parametrize("unembedding", ["cuda:0", "cuda:1"])
def test_compare_on_a_model_split_over_two_simulated_gpus(unembedding):
    """`circuits.compare` runs the model too (mean-ablated circuits, restarted at the first ablated layer)."""
    import circuits

    graphs = [engines.get("activation_patching").run(toy(), TASK, n=2, seed=0),
              engines.get("cdt", receiver_count=2).run(toy(), TASK, n=2, seed=0)]
    expected = circuits.compare(graphs, toy(), TASK, n=4, draws=3)
    model = simulated.on_gpus(toy(), unembedding)
    with simulated.SimulatedDevices():
        got = circuits.compare(graphs, model, TASK, n=4, draws=3)
    assert got.curves == expected.curves and got.random_draws == expected.random_draws
    assert (got.metric_full, got.metric_empty) == (expected.metric_full, expected.metric_empty)


TOY_TASKS = ["induction", "icl_regression", "few_shot", "regular_languages"]  # SmolLM2's: tests/check_devices_all_tasks.py


@pytest.mark.parametrize("task_name", TOY_TASKS)
def test_every_toy_task_on_simulated_gpus(task_name):
    """The tasks' own prompts, float inputs and metrics on their default models (regular languages: the quick
    one), split over two simulated GPUs, through every engine that reads a trained model."""
    from tests.check_devices_all_tasks import ENGINES, main

    assert {name for name, _ in ENGINES} == set(engines.for_trained_models())
    assert main([task_name]) == 0


# --- (2) a real device_map with a layer offloaded to disk ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer Llama (grouped-query attention, rotary, gated MLP, RMSNorm) with random weights and a word-level
    tokenizer, saved where `boot_transformers` can read it offline."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_llama")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 64)}}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                        unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def boot(path, **kwargs):
    from transformer_lens.model_bridge import TransformerBridge

    os.environ["HF_HUB_OFFLINE"] = "1"
    return TransformerBridge.boot_transformers(str(path), **kwargs).eval()


DEVICE_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
              "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}


def offloaded(model):
    return [name for name, p in model.named_parameters() if p.device.type == "meta"]


@pytest.fixture(scope="module")
def plain_and_offloaded(tiny_llama, tmp_path_factory):
    plain = boot(tiny_llama)
    split = boot(tiny_llama, device_map=DEVICE_MAP, offload_folder=str(tmp_path_factory.mktemp("offload")))
    return plain, split


def test_the_offloaded_model_is_the_plain_one_with_a_layer_on_disk(plain_and_offloaded):
    plain, split = plain_and_offloaded
    assert split.cfg.n_devices == 2 and split.cfg.device == "cpu"
    assert offloaded(split) and all(".layers.1." in name for name in offloaded(split))
    tokens = torch.tensor([[1, 5, 9, 5, 9, 7]])
    torch.testing.assert_close(split(tokens), plain(tokens), rtol=0, atol=1e-6)


def test_readable_weights_loads_offloaded_weights_and_puts_the_placeholders_back(plain_and_offloaded):
    plain, split = plain_and_offloaded
    attn = split.blocks[1].attn
    with pytest.raises(NotImplementedError, match="meta device"):
        attn.W_O  # noqa: B018  (what every engine hit before)
    with forward.readable_weights(split.blocks[1]):
        w_o = attn.W_O
    assert torch.equal(w_o, plain.blocks[1].attn.W_O)
    assert offloaded(split) and all(".layers.1." in name for name in offloaded(split))


@pytest.mark.parametrize("name, options", VARIANTS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS])
def test_every_engine_on_a_model_with_a_layer_offloaded_to_disk(plain_and_offloaded, name, options):
    plain, split = plain_and_offloaded
    before = offloaded(split)
    engine = engines.get(name, **options)
    assert engine.run(split, TASK, n=2, seed=0) == engine.run(plain, TASK, n=2, seed=0)
    assert offloaded(split) == before  # the layer is back on disk


def test_the_tiny_llama_on_two_simulated_gpus(tiny_llama):
    """Rotary tables, grouped-query attention and a gated MLP, placed per block: CD-T builds its rotary tables and
    masks on each block's device."""
    engine = engines.get("cdt", receiver_count=2)
    expected = engine.run(boot(tiny_llama), TASK, n=2, seed=0)
    model = simulated.on_gpus(boot(tiny_llama))
    with simulated.SimulatedDevices():
        assert engine.run(model, TASK, n=2, seed=0) == expected


def test_a_sweep_over_a_hub_model_with_a_device_map(tiny_llama, tmp_path):
    """The sweep's hub path end to end, offline: ``hub`` names the saved model's folder, ``device_map`` offloads a
    layer to disk; each cell's graph is the engine's graph on the plain model, and meta.json says where it ran."""

    import circuits
    from circuits.graph import HeadGraph

    spec = {"tasks": [{"name": "tests.references:RandomTokens", "options": {"seq_len": 8}}],
            "models": [{"name": "tiny-llama", "hub": str(tiny_llama), "device_map": DEVICE_MAP,
                        "offload_folder": str(tmp_path / "offload")}],
            "engines": [{"name": "edge_attribution", "options": {"method": "eap"}},
                        {"name": "cdt", "options": {"receiver_count": 2}}], "n": 2}
    report = circuits.sweep(spec, tmp_path / "out", backend="local", progress=False)
    assert report.ok and len(report.ran) == 2
    plain = boot(tiny_llama)
    for cell in report.cells:
        folder = tmp_path / "out" / cell.folder
        expected = engines.get(cell.engine.name, **cell.engine.options).run(plain, TASK, n=2, seed=0)
        assert HeadGraph.from_json(folder / "graph.json").scores() == expected.scores()
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["cell"]["model"]["hub"] == str(tiny_llama)
        assert meta["device"] == "cpu" and meta["parameter_devices"] == ["cpu", "meta"]  # a layer on disk
    # accelerate created the spec's folder (safetensors weights are read in place, so nothing is copied into it)
    assert (tmp_path / "offload").is_dir()


# --- (3) real GPUs, where a machine has them (skipped elsewhere: not run on this project's CPU machines yet) -----
GPU_MAP = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 1,
           "model.norm": 1, "lm_head": 1}


def assert_same_scores(graph, expected):
    assert set(graph.nx.edges) == set(expected.nx.edges)
    for head, score in expected.scores().items():
        assert graph.scores()[head] == pytest.approx(score, abs=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name, options", VARIANTS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS])
def test_every_engine_on_one_real_gpu(tiny_llama, name, options):
    engine = engines.get(name, **options)
    assert_same_scores(engine.run(boot(tiny_llama, device="cuda:0"), TASK, n=2, seed=0),
                       engine.run(boot(tiny_llama, device="cpu"), TASK, n=2, seed=0))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("name, options", VARIANTS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS])
def test_every_engine_on_two_real_gpus(tiny_llama, name, options):
    """The check the simulation stands in for: the tiny Llama split over two GPUs gives the scores it gives on one."""
    engine = engines.get(name, **options)
    expected = engine.run(boot(tiny_llama, device="cuda:0"), TASK, n=2, seed=0)
    split = boot(tiny_llama, device_map=GPU_MAP)
    assert split.cfg.n_devices == 2
    assert_same_scores(engine.run(split, TASK, n=2, seed=0), expected)
