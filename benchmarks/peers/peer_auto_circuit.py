"""auto-circuit (PyPI ``auto-circuit``) on a factorized `patchable_model` (separate q/k/v inputs per head).

- ``patching``: a head's activation patch is every edge out of it patched: for each head, one run of the corrupted
  prompts with `patch_mode` on those edges and the clean source outputs (`src_ablations`, RESAMPLE).
- ``edge_patching``: the same, one edge at a time, for every edge from a head (into a later head's q, k or v input
  or into the final residual stream, "Resid End" = our ``logits``).
- ``eap`` / ``eap_ig_inputs``: `mask_gradient_prune_scores` (grad_function "logit", answer_function "avg_diff",
  clean run, corrupted values): ``mask_val=0`` (EAP) or ``integrated_grad_samples=5`` (its IG: every edge's mask
  interpolated at once, k/5 for k = 0..5, gradients summed). Scores for our writer x reader layout.

The read-out position differs between prompts: the output slice is set to each prompt's position (the library's
``out_slice``, "last_seq" otherwise).
"""

from __future__ import annotations

from importlib.metadata import version

import torch

IG_SAMPLES = 5


class Peer:
    def __init__(self, side) -> None:
        from auto_circuit.data import PromptPairBatch
        from auto_circuit.types import AblationType
        from auto_circuit.utils.ablation_activations import src_ablations
        from auto_circuit.utils.graph_utils import patchable_model

        self.side, self.version = side, f"auto-circuit {version('auto-circuit')}"
        model = side.model(use_attn_result=True, use_split_qkv_input=True, use_hook_mlp_in=True)
        self.logit_diff = side.check(model)
        self.model = patchable_model(model, factorized=True, slice_output=None, separate_qkv=True,
                                     device=torch.device("cpu"))
        self.model.out_slice = (side.rows, side.position)
        self.src_ablations, self.resample = src_ablations, AblationType.RESAMPLE
        self.batch = PromptPairBatch(key=0, batch_diverge_idx=0, clean=side.clean, corrupt=side.corrupted,
                                     answers=side.answer[:, None], wrong_answers=side.foil[:, None])
        writers, readers = side.config["writers"], side.config["readers"]
        self.writer_index = {w: i for i, w in enumerate(writers)}
        self.reader_index = {r: i for i, r in enumerate(readers)}
        self.edges = sorted(self.model.edges, key=lambda e: (e.src.src_idx, e.dest.name))

    @staticmethod
    def our_name(node_name: str) -> str:
        """auto-circuit's node names in ours: A1.2 -> L1H2, A1.2.Q -> L1H2<q>, MLP 0 -> M0, Resid Start/End."""
        if node_name == "Resid Start":
            return "embed"
        if node_name == "Resid End":
            return "logits"
        if node_name.startswith("MLP "):
            return f"M{node_name[4:]}"
        parts = node_name[1:].split(".")
        head = f"L{parts[0]}H{parts[1]}"
        return head if len(parts) == 2 else f"{head}<{parts[2].lower()}>"

    def run(self, method: str) -> dict[str, torch.Tensor]:
        return getattr(self, method)()

    def _metric(self, logits: torch.Tensor) -> torch.Tensor:
        return self.side.metric_of(logits)

    def _patched(self, edges) -> float:
        from auto_circuit.utils.graph_utils import patch_mode

        with patch_mode(self.model, self.clean_outs, edges=edges):
            return float(self._metric(self.model(self.side.corrupted)))

    def _clean_outs(self) -> None:
        self.clean_outs = self.src_ablations(self.model, self.side.clean, self.resample)

    def patching(self) -> dict[str, torch.Tensor]:
        cfg = self.side.cfg
        out = torch.zeros(cfg.n_layers, cfg.n_heads)
        with torch.no_grad():
            self._clean_outs()
            for layer in range(cfg.n_layers):
                for head in range(cfg.n_heads):
                    name = f"A{layer}.{head}"
                    out[layer, head] = self._patched([e for e in self.edges if e.src.name == name])
        return {"patched": out}

    def edge_patching(self) -> dict[str, torch.Tensor]:
        """Patched metric per (sender head, reader) in our layout's rows of heads and readers that are not MLPs."""
        writers = [w for w in self.side.config["writers"] if w.startswith("L")]
        readers = [r for r in self.side.config["readers"] if not r.startswith("M")]
        out = torch.full((len(writers), len(readers)), float("nan"))
        with torch.no_grad():
            self._clean_outs()
            for edge in self.edges:
                src, dest = self.our_name(edge.src.name), self.our_name(edge.dest.name)
                if src in writers and dest in readers:
                    out[writers.index(src), readers.index(dest)] = self._patched([edge])
        return {"patched": out}

    def _mask_gradient(self, **kwargs) -> dict[str, torch.Tensor]:
        from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores

        scores = mask_gradient_prune_scores(self.model, [self.batch], None, grad_function="logit",
                                            answer_function="avg_diff", clean_corrupt="corrupt", **kwargs)
        out = torch.full((len(self.writer_index), len(self.reader_index)), float("nan"))
        for edge in self.edges:
            src, dest = self.our_name(edge.src.name), self.our_name(edge.dest.name)
            if src in self.writer_index and dest in self.reader_index:
                out[self.writer_index[src], self.reader_index[dest]] = edge.prune_score(scores)
        return out

    def eap(self) -> dict[str, torch.Tensor]:
        """mask_val 0: the gradient at the clean run of -mean logit difference, times corrupted - clean: the
        reference's EAP score times -1; returned in the reference's sign (x -1)."""
        return {"scores": -self._mask_gradient(mask_val=0.0)}

    def eap_ig_inputs(self) -> dict[str, torch.Tensor]:
        """Its IG: the mask gradient summed over IG_SAMPLES + 1 points; returned as their mean, in the reference's
        sign."""
        return {"scores": -self._mask_gradient(integrated_grad_samples=IG_SAMPLES) / (IG_SAMPLES + 1)}
