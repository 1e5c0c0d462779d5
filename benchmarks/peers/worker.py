"""The peers' side of `benchmarks.peers`: runs in `.venv-peers` (TransformerLens 2, auto-circuit, and the
checkouts named by PEERS_EAP_IG / PEERS_CD_CIRCUIT), never imports this project.

Protocol: one JSON request a line on stdin, one answer a line on stdout prefixed by ``@@peers `` (the peers'
own prints pass through and are ignored). Requests:

- ``{"op": "load", "dir": D}``: the model (D/config.json, D/model.safetensors in TransformerLens 2 names, or the
  Hugging Face Llama folder D/config.json ``hf_folder`` names, converted by `tl2_llama`) and
  prompts (D/prompts.safetensors: clean, corrupted, answer, foil, position); answers which peers are ready
  and the largest logit difference of each peer's model from ours (D/prompts.safetensors ``logits``); with
  ``"peers": [...]`` only those of auto_circuit, eap_ig, cd_circuit are loaded (TransformerLens 2 always).
- ``{"op": "run", "pair": P, "out": F}``: runs pair P once, timed; writes its scores to F (safetensors);
  answers ``{"seconds": s, "clean": m, "corrupted": m}`` (the metric means on that side's model).
- ``{"op": "quit"}``.

The metric is the logit difference answer - foil at each prompt's read-out position, mean over prompts.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

PREFIX = "@@peers "


def answer(payload: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


class Side:
    """The loaded model (one `HookedTransformer` per peer, the same weights), prompts and each pair's code."""

    def __init__(self, folder: str, only: Optional[list[str]] = None) -> None:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        folder = Path(folder)
        self.config = json.loads((folder / "config.json").read_text())
        if "hf_folder" in self.config:  # a Llama-style model: TransformerLens 2's own conversion of the HF weights
            sys.path.insert(0, str(Path(__file__).parent))
            self.tl2_fields, self.state = __import__("tl2_llama").load(self.config["hf_folder"])
        else:  # our toy's weights, written in TransformerLens 2's names (`weights.py`)
            self.tl2_fields, self.state = self.config["tl2"], load_file(folder / "model.safetensors")
        prompts = load_file(folder / "prompts.safetensors")
        self.clean, self.corrupted = prompts["clean"].long(), prompts["corrupted"].long()
        self.answer, self.foil = prompts["answer"].long(), prompts["foil"].long()
        self.position = prompts["position"].long()
        self.our_logits = prompts["logits"]
        self.rows = torch.arange(len(self.clean))
        self.cfg = HookedTransformerConfig(**self.tl2_fields, seed=0)
        self.models, self.errors, self.peers = {}, {}, {}
        self.plain = self.model()  # TransformerLens 2's own patching runs on the plain model
        self.peers["tl2"] = "transformer-lens " + _version("transformer_lens")
        self.logit_diffs = {"tl2": self.check(self.plain)}
        self._load_peers(only)

    # --- models -----------------------------------------------------------------------------------
    def model(self, **flags) -> torch.nn.Module:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        if self.tl2_fields.get("n_key_value_heads") and flags.get("use_split_qkv_input"):
            flags.setdefault("ungroup_grouped_query_attention", True)  # a k/v input per query head, as our readers
        cfg = HookedTransformerConfig(**self.tl2_fields, seed=0, **flags)
        model = HookedTransformer(cfg).eval()
        missing, unexpected = model.load_state_dict(self.state, strict=False)
        missing = [k for k in missing if not k.endswith(("IGNORE", ".mask", ".rotary_sin", ".rotary_cos"))]  # buffers
        if missing or unexpected:
            raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        return model

    def check(self, model) -> float:
        with torch.no_grad():
            logits = model(self.clean)[self.rows, self.position]
        return float((logits - self.our_logits).abs().max())

    def metric_of(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean logit difference of full-sequence logits ``[batch, pos, vocab]``."""
        last = logits[self.rows, self.position]
        return (last[self.rows, self.answer] - last[self.rows, self.foil]).mean()

    def metrics(self, model) -> tuple[float, float]:
        with torch.no_grad():
            return float(self.metric_of(model(self.clean))), float(self.metric_of(model(self.corrupted)))

    def _load_peers(self, only: Optional[list[str]]) -> None:
        here = Path(__file__).parent
        sys.path.insert(0, str(here))
        for name, module in (("auto_circuit", "peer_auto_circuit"), ("eap_ig", "peer_eap_ig"),
                             ("cd_circuit", "peer_cd_circuit")):
            if only is not None and name not in only:
                self.errors[name] = "not loaded (--peers)"
                continue
            try:
                peer = __import__(module).Peer(self)
            except Exception as error:  # noqa: BLE001 (a peer that cannot start is reported, not fatal)
                self.errors[name] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                continue
            self.models[name] = peer
            self.peers[name] = peer.version
            self.logit_diffs[name] = peer.logit_diff

    # --- pairs ------------------------------------------------------------------------------------
    def tl2_patching(self) -> dict[str, torch.Tensor]:
        from transformer_lens import patching

        model = self.plain
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(self.clean)
            patched = patching.get_act_patch_attn_head_out_all_pos(model, self.corrupted, clean_cache,
                                                                     self.metric_of)
        return {"patched": patched}

    def run(self, pair: str) -> tuple[float, dict[str, torch.Tensor], tuple[float, float]]:
        peer, _, method = pair.partition(":")
        if peer == "tl2":
            fn, model = getattr(self, method), self.plain
        else:
            owner = self.models[peer]
            fn, model = (lambda: owner.run(method)), owner.model
        start = time.perf_counter()
        scores = fn()
        seconds = time.perf_counter() - start
        return seconds, scores, self.metrics(model)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution.replace("_", "-"))


def main() -> None:
    torch.set_num_threads(int(os.environ.get("PEERS_THREADS", "1")))
    side = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "quit":
                answer({"ok": True})
                return
            if request["op"] == "load":
                side = Side(request["dir"], request.get("peers"))
                answer({"peers": side.peers, "errors": side.errors, "logit_diffs": side.logit_diffs})
            elif request["op"] == "run":
                seconds, scores, (clean, corrupted) = side.run(request["pair"])
                save_file({k: v.detach().float().contiguous().cpu() for k, v in scores.items()}, request["out"])
                answer({"seconds": seconds, "clean": clean, "corrupted": corrupted})
        except Exception as error:  # noqa: BLE001 (the driver reports it and goes on with other pairs)
            answer({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2000:]})


if __name__ == "__main__":
    main()
