"""Side by side with the peers' own code: same weights, same prompts, same metric, one run.

`python -m benchmarks.peers [--models induction,gpt2_toy[,smollm2]] [--pairs ...] [--repeats 5] [--out out/peers.json]`
(`make bench-peers` builds `.venv-peers` and runs this). For each model: its weights are written in
TransformerLens 2's names (SmolLM2: converted by TransformerLens 2's own Llama conversion in the worker,
`tl2_llama`), a worker process in `.venv-peers` loads them into `HookedTransformer`s (one per peer) and must give our
logits (to 1e-4; SmolLM2 2e-4) before anything is timed. Each pair then runs ours and every peer's code in
turn, `repeats` rounds (interleaved, so load from other processes on the shared cores falls on both sides alike),
median seconds; numbers are compared after each side's normalisation (`pairs.normalised`): max |diff|,
Spearman, overlap of the top-k edges by |score|.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import save_file

from benchmarks.peers import weights
from benchmarks.peers.pairs import PAIRS, Pair, bench_circuits, for_model, normalised, tl4_metrics, tl4_patching
from benchmarks.peers.worker_client import Worker
from circuits import PromptBatch, models
from circuits.comparison.ranking import spearman
from circuits.engines.edge_attribution import Layout
from circuits.mib import mib_edge_name

LOGIT_TOLERANCE = 1e-4
# SmolLM2 in TransformerLens 2 (its own Llama conversion) computes rotary (its own sin/cos tables), RMSNorm and the
# grouped KV heads in another order than the Hugging Face modules our bridge runs: 5.1e-5 seen on logits of up to 35
# (1.5e-6 relative: float32 rounding); 2e-4 leaves room for other builds of torch.
LLAMA_LOGIT_TOLERANCE = 2e-4
# Peers' runs that would take hours here: estimated from a sample instead (docs/benchmarks.md gives the estimates). On
# SmolLM2 auto-circuit's factorized model sums every sender's output into each of its 123k edges' receivers on every
# patched pass (~17 s a pass on 2 shared cores); one pass per head or per edge.
TOO_SLOW = {"smollm2": {"auto_circuit:patching": "too slow here: ~6 h (270 patched passes of ~78 s; not run)",
                        "auto_circuit:edge_patching": "too slow here: ~500 h (105,975 passes of ~17 s; not run)"}}
SEED = 0  # the prompts' seed
TOP_K = 10


def bench_model(name: str) -> tuple[Any, Any, PromptBatch]:
    """(model, task, batch): the induction model (2 layers x 4 heads, attention only, trained) or a 4-layer
    GPT-2-style toy (LayerNorm, tanh-GELU MLPs, random weights), both on induction prompts of 24 tokens; or the bundled
    SmolLM2-135M on induction prompts of 16 tokens remapped onto its vocabulary (`benchmarks.patching` case (c))."""
    from tasks.induction import Induction

    task = Induction(seq_len=24, min_length=4, max_length=8)
    if name == "smollm2":
        from benchmarks.patching import smollm2_induction

        model, task = models.bundled(), smollm2_induction()
    elif name == "induction":
        model = Induction().default_model()
    elif name == "gpt2_toy":
        from tests.cdt_models import native_bridge

        model = native_bridge(perturb=0.05, seed=3, n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256,
                              d_vocab=64, n_ctx=64, attn_only=False, act_fn="gelu_new", normalization_type="LN",
                              eps=1e-5, positional_embedding_type="standard")
    else:
        raise ValueError(f"model {name!r}; expected induction, gpt2_toy or smollm2")
    return model.eval(), task, task.batch(model, n=8, seed=SEED)


def write_side(model: Any, batch: PromptBatch, folder: Path, circuits: Sequence[frozenset] = (),
               hf_folder: Optional[Path] = None) -> None:
    """What the worker loads from `folder`: the model (our toy's weights in TransformerLens 2's names, or the path of
    the Hugging Face folder `hf_folder` our Llama-style model was loaded from, which the worker converts with
    TransformerLens 2's own code), our edge layout, the circuits to evaluate, the prompts and our logits."""
    layout = Layout.of(model)
    source = dict(hf_folder=str(hf_folder)) if hf_folder else dict(tl2=weights.tl2_config(model))
    config = dict(**source, writers=[w for w, _ in layout.writers],
                  readers=[f"{n}<{i}>" if i else n for n, i, _ in layout.readers],
                  circuits=[sorted(mib_edge_name(edge) for edge in circuit) for circuit in circuits])
    (folder / "config.json").write_text(json.dumps(config))
    if not hf_folder:
        save_file(weights.tl2_state(model), str(folder / "model.safetensors"))
    rows = torch.arange(batch.size)
    with torch.no_grad():
        logits = model(batch.clean)[rows, batch.position]
    save_file({"clean": batch.clean, "corrupted": batch.corrupted, "answer": batch.answer, "foil": batch.foil,
               "position": batch.position, "logits": logits.contiguous()}, str(folder / "prompts.safetensors"))



def logit_tolerance(name: str) -> float:
    """How far a peer's logits may lie from ours on model `name` before the harness refuses to time it."""
    return LLAMA_LOGIT_TOLERANCE if name == "smollm2" else LOGIT_TOLERANCE


def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    keep = ~(torch.isnan(ours) | torch.isnan(theirs))
    a, b = ours[keep].flatten(), theirs[keep].flatten()
    k = min(TOP_K, len(a))
    top_a, top_b = set(a.abs().topk(k).indices.tolist()), set(b.abs().topk(k).indices.tolist())
    return {"max_abs_diff": float((a - b).abs().max()), "largest": float(b.abs().max()),
            "spearman": spearman(a.tolist(), b.tolist()), "top_k": k, "top_k_overlap": len(top_a & top_b) / k,
            "n": len(a)}


def run_pair(pair: Pair, model: Any, task: Any, batch: PromptBatch, worker: Optional[Worker], repeats: int,
             log: Any, too_slow: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """`pair` on `model`: ours and every peer that is loaded and not in `too_slow` (peer -> why), interleaved; nothing
    (not even ours) where no peer is left."""
    too_slow = too_slow or {}
    ready = [p for p in pair.peers if p not in too_slow
             and (p == "tl4" or (worker and p.split(":")[0] in worker.loaded["peers"]))]
    for p in pair.peers:
        if p not in ready:
            peer = p.split(":")[0]
            why = too_slow.get(p) or (worker.loaded["errors"].get(peer, "not loaded") if worker else "no .venv-peers")
            log(f"  {p:<32} skipped: {why}")
    if not ready:
        return {"peers": {}}
    times: dict[str, list[float]] = {"ours": [], **{p: [] for p in ready}}
    results: dict[str, Any] = {}
    for attempt in range(repeats + 1):  # interleaved: ours, then each peer, every round; round 0 warms up, untimed
        if attempt == 1:
            times = {key: [] for key in times}
        start = time.perf_counter()
        results["ours"] = pair.ours(model, task, batch)
        times["ours"].append(time.perf_counter() - start)
        for p in ready:
            if p == "tl4":
                start = time.perf_counter()
                values = tl4_patching(model, task, batch)[0]
                times[p].append(time.perf_counter() - start)
                results[p] = (values, *tl4_metrics(model, task, batch))
            else:
                seconds, scores, (clean, corrupted) = worker.run(p)
                times[p].append(seconds)
                results[p] = (scores[pair.peer_key], clean, corrupted)
    ours_scores = normalised(pair.normalise, *results["ours"])
    out = {"ours_s": statistics.median(times["ours"]), "peers": {}}
    for p in ready:
        theirs = normalised(pair.normalise, *results[p])
        record = {"peer_s": statistics.median(times[p]), **agreement(ours_scores, theirs)}
        record["ratio"] = record["peer_s"] / out["ours_s"]  # > 1: we are faster
        if pair.variant:
            label, variant = pair.variant
            ours_variant = normalised(pair.normalise, *variant(model, task, batch))
            record["variant"] = {"label": label, **agreement(ours_variant, theirs)}
        out["peers"][p] = record
        log(f"  {p:<32} ours {out['ours_s']:8.4f} s  peer {record['peer_s']:8.4f} s  speed-up {record['ratio']:6.2f}x  "
            f"max|diff| {record['max_abs_diff']:.1e} (largest {record['largest']:.2f})  "
            f"Spearman {record['spearman']:+.4f}  top-{record['top_k']} {record['top_k_overlap']:.2f}")
        if "variant" in record:
            log(f"  {'':<32} {record['variant']['label']}: max|diff| {record['variant']['max_abs_diff']:.1e}")
    return out


def markdown_table(results: dict[str, Any]) -> str:
    """The docs' table: one row per model, pair and peer."""
    rows = ["| model | pair | peer | ours (s) | peer (s) | peer / ours | max abs diff | Spearman | top-k overlap |",
            "|---|---|---|---|---|---|---|---|---|"]
    for model, entry in results["models"].items():
        for key, pair in entry["pairs"].items():
            for peer, r in pair["peers"].items():
                variant = f" ({r['variant']['max_abs_diff']:.1e} at its eps)" if "variant" in r else ""
                rows.append(f"| {model} | {PAIRS[key].name} | {peer} | {pair['ours_s']:.3f} | {r['peer_s']:.3f} | "
                            f"**{r['ratio']:.2f}x** | {r['max_abs_diff']:.1e}{variant} | {r['spearman']:+.4f} | "
                            f"{r['top_k_overlap']:.2f} of {r['top_k']} |")
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="induction,gpt2_toy", help="and smollm2 (not by default: ~40 min here)")
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--peers", default=None,
                        help="load only these of auto_circuit,eap_ig,cd_circuit, or none (TransformerLens 2 "
                             "always; saves memory)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on each side (1: steadier)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the peers' progress bars (the worker inherits it)
    log = lambda text: print(text, flush=True)  # noqa: E731
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "threads": args.threads, "repeats": args.repeats, "models": {}}
    for name in args.models.split(","):
        model, task, batch = bench_model(name)
        log(f"{name}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, {batch.size} prompts of "
            f"{batch.clean.shape[1]} tokens")
        keys = [key for key in args.pairs.split(",") if key]  # none: load and check the logits only
        circuits = bench_circuits(model, task, batch) if "evaluation" in keys else []
        with tempfile.TemporaryDirectory(prefix="peers-") as folder:
            hf_folder = models.bundled_folder() if name == "smollm2" else None
            write_side(model, batch, Path(folder), circuits, hf_folder)
            worker = None
            try:
                worker = Worker(Path(folder), threads=args.threads,
                                peers=args.peers.split(",") if args.peers else None)
            except FileNotFoundError as error:
                log(f"  peers skipped: {error}")
            entry: dict[str, Any] = {"pairs": {}}
            if worker:
                entry.update(peers=worker.loaded["peers"], errors=worker.loaded["errors"],
                             logit_diffs=worker.loaded["logit_diffs"])
                tolerance = logit_tolerance(name)
                for peer, diff in worker.loaded["logit_diffs"].items():
                    if diff > tolerance:
                        raise RuntimeError(f"{peer}'s model gives logits {diff:.2e} away from ours: "
                                           "not the same weights")
                log(f"  same logits on every side (max |diff| {max(worker.loaded['logit_diffs'].values()):.1e}); "
                    f"peers: {worker.loaded['peers']}")
                for peer, why in worker.loaded["errors"].items():
                    log(f"  {peer} skipped: {why}")
            try:
                for key in keys:
                    log(f" {PAIRS[key].name}")
                    pair = for_model(PAIRS[key], circuits, SEED)
                    entry["pairs"][key] = run_pair(pair, model, task, batch, worker, args.repeats, log,
                                                   TOO_SLOW.get(name))
            finally:
                if worker:
                    worker.close()
        results["models"][name] = entry
    log("\n" + markdown_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results
