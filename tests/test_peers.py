"""The peers harness (benchmarks/peers) on the smallest model, with the peers that are installed; SmolLM2 on
TransformerLens 2 (`slow`): its logits only.

Needs `.venv-peers` (`make bench-peers` builds it; `make test` does not): skipped, saying so, without it. EAP-IG and
CD_Circuit take part where PEERS_EAP_IG / PEERS_CD_CIRCUIT name checkouts; the test asserts on what ran.
"""

from __future__ import annotations

import pytest

from benchmarks.peers import harness
from benchmarks.peers.worker_client import PEERS_PYTHON, peers_python

pytestmark = pytest.mark.skipif(peers_python() is None,
                                reason=f"{PEERS_PYTHON} is absent (built by `make bench-peers`, not by `make test`)")


@pytest.fixture(scope="module")
def results():
    pairs = "activation_patching,eap,cdt"  # the quick ones; `make bench-peers` runs every pair
    return harness.main(["--models", "induction", "--pairs", pairs, "--repeats", "1"])["models"]["induction"]


def test_same_logits_on_every_side(results):
    assert results["logit_diffs"]["tl2"] <= harness.LOGIT_TOLERANCE
    assert all(diff <= harness.LOGIT_TOLERANCE for diff in results["logit_diffs"].values())


def test_activation_patching_agrees_with_transformer_lens(results):
    peers = results["pairs"]["activation_patching"]["peers"]
    for name in ("tl4", "tl2:tl2_patching"):
        assert peers[name]["max_abs_diff"] < 1e-4 and peers[name]["spearman"] > 0.999
        assert peers[name]["peer_s"] > 0


def test_gradient_and_decomposition_peers_agree_where_installed(results):
    """EAP with EAP-IG's and auto-circuit's code, CD-T with CD_Circuit's: 1e-4 after normalisation (CD_Circuit at its
    own LayerNorm epsilon)."""
    for name, record in results["pairs"]["eap"]["peers"].items():
        assert record["max_abs_diff"] < 1e-4 and record["largest"] > 0.01, name
    for name, record in results["pairs"]["cdt"]["peers"].items():
        assert record["variant"]["max_abs_diff"] < 1e-4 and record["spearman"] > 0.99, name


def test_every_installed_peer_ran_or_said_why(results):
    for key, pair in results["pairs"].items():
        for name, record in pair["peers"].items():
            assert record["n"] > 0 and record["largest"] > 0, (key, name)
    for peer, why in results["errors"].items():
        assert why, peer


@pytest.mark.slow
def test_smollm2_in_transformer_lens_2_gives_our_logits():
    """SmolLM2 converted by TransformerLens 2's own Llama conversion from the folder `bundled()` reads (RMSNorm,
    rotary, grouped KV heads, gated MLP) gives our bridge's logits on the benchmark's prompts, on each model loaded;
    CD_Circuit (GPT-2 only) says why it does not take part. No pair is run (~1.5 min: loading and checking); not
    auto-circuit's model (its 123k-edge patchable model takes several GB)."""
    args = ["--models", "smollm2", "--pairs", "", "--peers", "eap_ig,cd_circuit", "--repeats", "1"]
    results = harness.main(args)["models"]["smollm2"]
    assert 0 < results["logit_diffs"]["tl2"] <= harness.LLAMA_LOGIT_TOLERANCE
    assert all(diff <= harness.LLAMA_LOGIT_TOLERANCE for diff in results["logit_diffs"].values())
    assert "cd_circuit" not in results["peers"]
    assert "GPT-2" in results["errors"]["cd_circuit"]  # said before it looks for its checkout
