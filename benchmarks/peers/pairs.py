"""The pairs: our engine and each peer's code for the same measurement, and how each side's numbers are normalised.

Every side returns raw numbers plus its own clean and corrupted metric means (mean logit difference);
`normalised` turns them into the scores compared:

- activation patching: per head, ``(m_patched - m_corrupted) / (m_clean - m_corrupted)`` (denoising);
- edge patching: per edge, the same fraction (denoising);
- EAP / EAP-IG (the reference's noising convention, ours ``convention="mib"``): ``-score / (m_clean - m_corrupted)``
  (our graph's normalisation: 1 when the edge carries the whole behaviour);
- CD-T: per head, ``(m(rel + irrel) - m(irrel)) / (m_clean - m_corrupted)``.
"""

from __future__ import annotations

import copy as copy_module
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch

from circuits import PromptBatch
from circuits.engines import CDT, ActivationPatching, EdgeAttribution, PathPatching
from circuits.engines.edge_attribution import Layout
from tests.references import tl_metric, tl_patched

Raw = tuple[torch.Tensor, float, float]  # (values, clean metric, corrupted metric)


@dataclass(frozen=True)
class Pair:
    name: str  # the measurement
    ours: Optional[Callable[[Any, Any, PromptBatch], Raw]]  # None: made per model (`for_model`)
    peers: tuple[str, ...]  # "peer:method" run by the worker; "tl4" runs TransformerLens 4 in our process
    normalise: str  # "fraction" (patched metric) or "eap" (gradient score) or "cdt" (m(irrel) - m(total))
    peer_key: str  # the tensor the worker returns
    # ours again on a copy of the model changed to the peer's own convention (untimed): names why numbers differ
    variant: Optional[tuple[str, Callable[[Any, Any, PromptBatch], Raw]]] = None


def _measured(engine: Any, model: Any, task: Any, batch: PromptBatch) -> Any:
    return engine.measure(model, task, batch)


def ours_patching(model: Any, task: Any, batch: PromptBatch) -> Raw:
    m = _measured(ActivationPatching(), model, task, batch)
    return m.values.heads, m.clean, m.corrupted


def tl4_patching(model: Any, task: Any, batch: PromptBatch) -> Raw:
    """TransformerLens 4's own `patching` on the bridge (caching run and per-head loop)."""
    return tl_patched(model, task, batch), float("nan"), float("nan")


def tl4_metrics(model: Any, task: Any, batch: PromptBatch) -> tuple[float, float]:
    return tl_metric(model, task, batch, batch.clean), tl_metric(model, task, batch, batch.corrupted)


def ours_edge_patching(model: Any, task: Any, batch: PromptBatch) -> Raw:
    """Exact patching of each head -> head q/k/v and head -> logits edge: path patching with MLPs frozen is
    edge patching when MLPs are nodes of the graph (the receiver alone hears the sender's change)."""
    engine = PathPatching(per_input=True, freeze_mlps=True, progress=False)
    m = _measured(engine, model, task, batch)
    return edge_patch_matrix(model, m.values), m.clean, m.corrupted


def edge_patch_matrix(model: Any, values: dict) -> torch.Tensor:
    """Path patching's patched means as ``[sender head, reader]`` over `Layout` readers that are heads' q/k/v or
    the logits (NaN where no edge)."""
    layout = Layout.of(model)
    heads = [w for w, _ in layout.writers if w.startswith("L")]
    readers = [(node, which) for node, which, _ in layout.readers if not node.startswith("M")]
    out = torch.full((len(heads), len(readers)), float("nan"))
    for i, sender in enumerate(heads):
        for j, (receiver, which) in enumerate(readers):
            value = values.get((sender, receiver), {}).get(which if which else "")
            if value is not None:
                out[i, j] = value
    return out


def ours_eap(method: str, steps: int) -> Callable[[Any, Any, PromptBatch], Raw]:
    def run(model: Any, task: Any, batch: PromptBatch) -> Raw:
        m = _measured(EdgeAttribution(method=method, convention="mib", steps=steps, progress=False), model, task, batch)
        return m.values, m.clean, m.corrupted

    return run


def ours_cdt(model: Any, task: Any, batch: PromptBatch) -> Raw:
    m = _measured(CDT(receiver_count=0, progress=False), model, task, batch)
    return m.values.nodes, m.clean, m.corrupted


CD_CIRCUIT_EPS = 1e-8  # CD_Circuit's LayerNorm epsilon, hard-coded in its GPTLayerNormWrapper


def ours_cdt_at_reference_eps(model: Any, task: Any, batch: PromptBatch) -> Raw:
    """`ours_cdt` on a copy of the model whose LayerNorms use CD_Circuit's epsilon instead of the model's."""
    copy = copy_module.deepcopy(model)
    for module in copy.modules():
        if isinstance(getattr(module, "eps", None), float):
            module.eps = CD_CIRCUIT_EPS
    copy.cfg.eps = CD_CIRCUIT_EPS
    return ours_cdt(copy, task, batch)


CIRCUIT_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5)  # of the model's edges, by |EAP-IG score|, pruned as MIB prunes


def bench_circuits(model: Any, task: Any, batch: PromptBatch) -> list[frozenset]:
    """The circuits both sides evaluate: our EAP-IG (inputs) graph's top edges at `CIRCUIT_FRACTIONS`."""
    engine = EdgeAttribution(method="eap_ig_inputs", convention="mib", progress=False)
    graph = engine.graph(model, engine.measure(model, task, batch))
    return [graph.circuit(fraction=f, by="absolute") for f in CIRCUIT_FRACTIONS]


def ours_evaluate(circuits: list[frozenset], seed: int) -> Callable[[Any, Any, PromptBatch], Raw]:
    """`circuits.evaluate` (patching: every edge outside a circuit carries its sender's corrupted output) on the
    benchmark's prompts (the task's `batch.size` prompts for `seed`): each circuit's metric mean."""
    def run(model: Any, task: Any, batch: PromptBatch) -> Raw:
        from circuits import evaluate

        result = evaluate(model, task, circuits, ablation="patching", n=batch.size, seed=seed)
        return torch.tensor(result.metrics), result.full, result.empty

    return run


PAIRS = {
    "activation_patching": Pair("activation patching (heads, all positions)", ours_patching,
                                ("tl4", "tl2:tl2_patching", "auto_circuit:patching"), "fraction", "patched"),
    "edge_patching": Pair("exact edge patching (head -> q/k/v, logits)", ours_edge_patching,
                          ("auto_circuit:edge_patching",), "fraction", "patched"),
    "eap": Pair("EAP", ours_eap("eap", 1), ("eap_ig:EAP", "auto_circuit:eap"), "eap", "scores"),
    "eap_ig_inputs": Pair("EAP-IG (inputs, 5 steps)", ours_eap("eap_ig_inputs", 5),
                          ("eap_ig:EAP-IG-inputs", "auto_circuit:eap_ig_inputs"), "eap", "scores"),
    "eap_ig_activations": Pair("EAP-IG (activations, 5 steps)", ours_eap("eap_ig_activations", 5),
                               ("eap_ig:EAP-IG-activations",), "eap", "scores"),
    "evaluation": Pair("circuit evaluation (patching; 5 circuits, 2-50% of edges)", None, ("eap_ig:evaluate",),
                       "fraction", "patched"),
    "cdt": Pair("CD-T (heads -> logits)", ours_cdt, ("cd_circuit:cdt",), "cdt", "nodes",
                variant=(f"ours with CD_Circuit's LayerNorm eps {CD_CIRCUIT_EPS:g}", ours_cdt_at_reference_eps)),
}


def for_model(pair: Pair, circuits: list[frozenset], seed: int) -> Pair:
    """`pair` with its own side made for this model's benchmark `circuits` where it needs them."""
    return replace(pair, ours=ours_evaluate(circuits, seed)) if pair.ours is None else pair


def normalised(kind: str, values: torch.Tensor, clean: float, corrupted: float) -> torch.Tensor:
    gap = clean - corrupted
    values = values.double()
    if kind == "fraction":
        return (values - corrupted) / gap
    if kind == "eap":
        return -values / gap
    if kind == "cdt":
        return -values / gap  # values are m(irrel) - m(rel + irrel)
    raise ValueError(kind)
