"""Edge attribution equal to the reference code's numbers (hannamw/EAP-IG) under ``convention="mib"``.

tests/fixtures/eap_reference.pt holds EAP-IG's own edge scores (commit recorded in the fixture), computed by
tests/fixtures/make_eap_reference.py in a side environment, for random GPT-2-style models (LayerNorm, tanh GELU,
learned positions, non-zero biases) with and without MLPs: EAP, EAP-IG-inputs (5 steps), EAP-IG-activations
(3 steps), intervention "patching", logit difference. The same weights are loaded into a TransformerLens 4 native
model; our unnormalised scores (``measure(...).values``) must equal the reference's to 1e-4 of the largest score,
and our normalised graph scores are the reference's times -1 / (m_clean - m_corrupted), exactly that factor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuits import PromptBatch, metrics
from circuits.engines import EdgeAttribution
from circuits.engines.edge_attribution import Layout
from tests.cdt_models import load_tl2_weights, native_bridge

FIXTURE = torch.load(Path(__file__).parent / "fixtures" / "eap_reference.pt", weights_only=True)
METHODS = {"EAP": "eap", "EAP-IG-inputs": "eap_ig_inputs", "EAP-IG-activations": "eap_ig_activations"}


class Fixed:
    """The fixture's prompts as a task: answer and foil at the last position, logit difference."""

    name = "eap_reference"

    def __init__(self, entry):
        self.entry = entry

    def batch(self, model, n, seed):
        e = self.entry
        return PromptBatch(clean=e["clean"], corrupted=e["corrupted"], answer=e["label"][:, 0], foil=e["label"][:, 1],
                           position=torch.full((len(e["clean"]),), e["clean"].shape[1] - 1))

    def metric(self, logits, batch):
        return metrics.logit_difference(logits, batch.answer, batch.foil)

    def default_model(self):
        raise NotImplementedError


@pytest.fixture(scope="module", params=[0, 1], ids=["mlp", "attn_only"])
def reference(request):
    entry = FIXTURE["models"][request.param]
    c = entry["config"]
    model = native_bridge(n_layers=c["n_layers"], d_model=c["d_model"], n_heads=c["n_heads"], d_head=c["d_head"],
                          d_mlp=c["d_mlp"], d_vocab=c["d_vocab"], n_ctx=c["n_ctx"], attn_only=c["attn_only"],
                          act_fn="gelu_new", normalization_type="LN", eps=c["eps"], positional_embedding_type="standard")
    load_tl2_weights(model, entry["state_dict"])
    return model, entry


def reference_in_our_order(model, entry, scores):
    """The reference's [forward, backward] matrix re-indexed to our `Layout` (writers x readers)."""
    layout = Layout.of(model)
    writers = [entry["writers"].index(name) for name, _ in layout.writers]
    readers = [entry["readers"].index(f"{node}<{which}>" if which else node) for node, which, _ in layout.readers]
    return scores[writers][:, readers].double() * layout.mask()


@pytest.mark.parametrize("method", list(METHODS))
def test_mib_convention_equals_the_reference(reference, method):
    model, entry = reference
    task = Fixed(entry)
    engine = EdgeAttribution(method=METHODS[method], convention="mib", steps=entry["steps"][method] or 5)
    measured = engine.measure(model, task, task.batch(model, 4, 0))
    theirs = reference_in_our_order(model, entry, entry["scores"][method])
    largest = theirs.abs().max()
    assert largest > 0.1  # the comparison is not of zeros
    assert (measured.values - theirs).abs().max() <= 1e-4 * largest
    # the clean and corrupted metrics are the reference model's own, and the normalisation is one exact factor
    assert measured.clean == pytest.approx(entry["metrics"]["clean"], abs=1e-4)
    assert measured.corrupted == pytest.approx(entry["metrics"]["corrupted"], abs=1e-4)
    graph = engine.graph(model, measured)
    factor = -1.0 / (measured.clean - measured.corrupted)
    layout = Layout.of(model)
    for (writer, _), row in zip(layout.writers, measured.values):
        if writer != "embed":
            assert graph.nx.nodes[writer]["score"] == pytest.approx(float(row.sum()) * factor, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("method", ["eap_ig_inputs", "eap_ig_activations"])
def test_library_convention_differs_where_the_docs_say(reference, method):
    """Our default (denoising, midpoint points) is another estimate of the same effect: not the reference's
    numbers. Equal ones here would mean the switch does nothing."""
    model, entry = reference
    task = Fixed(entry)
    name = {"eap_ig_inputs": "EAP-IG-inputs", "eap_ig_activations": "EAP-IG-activations"}[method]
    ours = EdgeAttribution(method=method, steps=2).measure(model, task, task.batch(model, 4, 0))
    theirs = reference_in_our_order(model, entry, entry["scores"][name])
    assert (-ours.values - theirs).abs().max() > 1e-3 * theirs.abs().max()
