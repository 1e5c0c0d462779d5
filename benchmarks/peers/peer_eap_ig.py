"""EAP-IG (hannamw/EAP-IG) from the checkout PEERS_EAP_IG names: its `attribute` (EAP, EAP-IG-inputs,
EAP-IG-activations, intervention "patching"), scores re-indexed to our edge layout (`config.json` ``writers`` and
``readers``). Two adaptations outside its computation: its score matrix's ``device='cuda'`` is dropped (CPU
machine), and its `tokenize_plus` is handed token ids (our prompts are token ids, every position real; the
read-out position is passed as the prompt's length)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

STEPS = {"EAP": None, "EAP-IG-inputs": 5, "EAP-IG-activations": 5}


class _CpuTorch:
    """`torch` as EAP-IG's attribute module sees it, with ``device=...`` dropped from `zeros` (its score matrix)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, device=None, **kwargs):
        return torch.zeros(*args, **kwargs)


class Peer:
    def __init__(self, side) -> None:
        path = os.environ.get("PEERS_EAP_IG")
        if not path:
            raise RuntimeError("PEERS_EAP_IG is not set (a checkout of hannamw/EAP-IG)")
        sys.path.insert(0, os.path.join(path, "src"))
        import eap.attribute as attribute
        import eap.evaluate as evaluate
        from eap.graph import Graph

        attribute.torch = _CpuTorch()
        attribute.tokenize_plus = evaluate.tokenize_plus = self._token_ids
        self.evaluate_graph = evaluate.evaluate_graph
        self.attribute, self.side = attribute, side
        commit = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        self.version = f"hannamw/EAP-IG {commit[:12] or 'unknown commit'}"
        self.model = side.model(use_attn_result=True, use_split_qkv_input=True, use_hook_mlp_in=True)
        self.logit_diff = side.check(self.model)
        self.graph = Graph.from_model(self.model)
        self.batches = [(side.clean, side.corrupted, torch.stack([side.answer, side.foil], 1))]
        self.order = self._our_order(side.config["writers"], side.config["readers"])
        self.circuits = [self._circuit_graph(Graph, names) for names in side.config.get("circuits", [])]

    def _token_ids(self, model, tokens, max_length=None):
        """The reference's `tokenize_plus` for our prompts (token ids): (tokens, mask, lengths, n_pos), every position
        real, the length the read-out position + 1 (the reference reads logits at input_lengths - 1)."""
        return tokens, torch.ones_like(tokens), self.side.position + 1, tokens.shape[1]

    @staticmethod
    def metric(logits, clean_logits, input_lengths, label):
        """Logit difference summed over the batch (the reference divides by the number of prompts)."""
        rows = torch.arange(len(logits))
        last = logits[rows, input_lengths - 1]
        return (last[rows, label[:, 0]] - last[rows, label[:, 1]]).sum()

    def _our_order(self, writers, readers):
        g, cfg = self.graph, self.side.cfg
        forward, backward = {"embed": g.forward_index(g.nodes["input"], attn_slice=False)}, {}
        for layer in range(cfg.n_layers):
            for head in range(cfg.n_heads):
                node = g.nodes[f"a{layer}.h{head}"]
                forward[f"L{layer}H{head}"] = g.forward_index(node, attn_slice=False)
                for letter in "qkv":
                    backward[f"L{layer}H{head}<{letter}>"] = g.backward_index(node, qkv=letter, attn_slice=False)
            node = g.nodes[f"m{layer}"]
            forward[f"M{layer}"] = g.forward_index(node, attn_slice=False)
            backward[f"M{layer}"] = g.backward_index(node, attn_slice=False)
        backward["logits"] = g.n_backward - 1
        return [forward[w] for w in writers], [backward[r] for r in readers]

    def _circuit_graph(self, Graph, names):
        """A graph with exactly the edges `names` (MIB's spelling) and their nodes in it (built outside the timing)."""
        graph = Graph.from_model(self.model)
        graph.in_graph[:] = False
        graph.nodes_in_graph[:] = False
        for name in names:
            edge = graph.edges[name]
            edge.in_graph = True
            for node in (edge.parent, edge.child):
                if node.name != "logits":
                    node.in_graph = True
        return graph

    @staticmethod
    def per_prompt(logits, clean_logits, input_lengths, label):
        rows = torch.arange(len(logits))
        last = logits[rows, input_lengths - 1]
        return last[rows, label[:, 0]] - last[rows, label[:, 1]]

    def run(self, method: str) -> dict[str, torch.Tensor]:
        if method == "evaluate":  # each circuit's metric mean, every edge outside it patched (`evaluate_graph`)
            return {"patched": torch.stack([self.evaluate_graph(self.model, graph, self._loader(), self.per_prompt,
                                                                intervention="patching", quiet=True).mean()
                                            for graph in self.circuits])}
        return self._attribute(method)

    def _attribute(self, method: str) -> dict[str, torch.Tensor]:
        """Raw scores (the reference's own units), our writers x readers."""
        self.attribute.attribute(self.model, self.graph, self._loader(), self.metric, method=method,
                                 ig_steps=STEPS[method], quiet=True)
        rows, columns = self.order
        return {"scores": self.graph.scores[rows][:, columns].clone()}

    def _loader(self):
        return list(self.batches)
