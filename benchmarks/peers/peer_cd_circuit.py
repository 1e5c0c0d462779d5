"""CD_Circuit (adelaidehsu/CD_Circuit) from the checkout PEERS_CD_CIRCUIT names: `prop_GPT` (`prop_toy_model_4l` on
attention-only models) with every head, at every position, as one source set, on the clean prompts, the corrupted
prompts' z as the value the source is measured against (``mean_acts`` per prompt, ``set_irrel_to_mean``): per head
``m(irrel) - m(rel + irrel)``, as our CD-T engine measures. One adaptation outside its computation: its
`pyfunctions/wrappers.py` declares ``type AblationSet = ...`` (Python 3.12 syntax); on older Pythons the module is
compiled from its text with that one statement as a plain assignment. Its LayerNorm epsilon is its own (1e-8,
hard-coded in `GPTLayerNormWrapper`), not the model's."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types

import torch


def _import_wrappers(path: str) -> None:
    """`pyfunctions.wrappers` from the checkout, its 3.12-only ``type X = ...`` read as ``X = ...`` before 3.12."""
    if sys.version_info >= (3, 12):
        return
    import pyfunctions  # noqa: F401 (the package first)

    source_path = os.path.join(path, "pyfunctions", "wrappers.py")
    with open(source_path) as handle:
        source = handle.read().replace("\ntype AblationSet = ", "\nAblationSet = ")
    module = types.ModuleType("pyfunctions.wrappers")
    module.__file__ = source_path
    sys.modules["pyfunctions.wrappers"] = module
    exec(compile(source, source_path, "exec"), module.__dict__)


class Peer:
    def __init__(self, side) -> None:
        cfg = side.cfg
        if cfg.normalization_type != "LN" or cfg.positional_embedding_type != "standard" or cfg.gated_mlp:
            raise NotImplementedError("CD_Circuit's propagation is written for GPT-2 (LayerNorm with bias, learned "
                                      "positions, GELU MLP); this model has "
                                      f"normalization {cfg.normalization_type}, {cfg.positional_embedding_type} "
                                      f"positions{', a gated MLP' if cfg.gated_mlp else ''}")
        path = os.environ.get("PEERS_CD_CIRCUIT")
        if not path:
            raise RuntimeError("PEERS_CD_CIRCUIT is not set (a checkout of adelaidehsu/CD_Circuit)")
        sys.path.insert(0, path)
        _import_wrappers(path)
        from pyfunctions.wrappers import Node

        if side.cfg.attn_only:
            from pyfunctions.toy_model import prop_toy_model_4l as propagate
        else:
            from pyfunctions.cdt_source_to_target import prop_GPT as propagate
        self.propagate, self.Node, self.side = propagate, Node, side
        commit = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        self.version = f"adelaidehsu/CD_Circuit {commit[:12] or 'unknown commit'}"
        self.model = side.model()
        self.logit_diff = side.check(self.model)

    def run(self, method: str) -> dict[str, torch.Tensor]:
        side, cfg = self.side, self.side.cfg
        n_pos = side.clean.shape[1]
        with torch.no_grad():
            _, cache = self.model.run_with_cache(side.corrupted, names_filter=lambda name: name.endswith("hook_z"))
            baseline = torch.stack([cache[f"blocks.{layer}.attn.hook_z"].flatten(-2) for layer in range(cfg.n_layers)])
            mask = torch.triu(torch.ones(n_pos, n_pos, dtype=torch.bool), 1)
            extended = torch.zeros(1, 1, n_pos, n_pos).masked_fill(mask, torch.finfo(torch.float32).min)
            sets = [tuple(self.Node(layer, p, head) for p in range(n_pos))
                    for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
            # prop_GPT takes mean_acts[layer], prop_toy_model_4l mean_acts[:, layer] for per-prompt values
            mean_acts = baseline.transpose(0, 1) if cfg.attn_only else baseline
            out, _, _, _ = self.propagate(side.clean, extended, self.model, sets, target_nodes=[], device="cpu",
                                          mean_acts=mean_acts, set_irrel_to_mean=True)
        nodes = torch.zeros(len(sets))
        for i, decomposition in enumerate(out):
            rel, irrel = torch.as_tensor(decomposition.rel), torch.as_tensor(decomposition.irrel)
            nodes[i] = side.metric_of(irrel) - side.metric_of(rel + irrel)
        return {"nodes": nodes.view(cfg.n_layers, cfg.n_heads)}
