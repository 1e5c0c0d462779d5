"""Path patching: the batched engine vs a plain per-pair loop (the literal 4-step algorithm, hooks on full runs).

Same model, prompts and metric in one run; prints both times, their ratio, the max absolute difference
of the patched metric values, and the time of the work the engine cannot skip (each edge's own
downstream recompute, timed on its own) to say how far the engine is from that limit.
`python -m benchmarks.path_patching [--quick] [--cases a,b]`

  a  default induction model (2 layers x 4 heads), 8 prompts (per-call overhead dominates; goal >= 10x)
  b  4-layer x 8-head d_model-128 toy, 16 prompts of 64 tokens (compute dominates; goal >= 3x)

`pair_loop` / `path_metric` are also the tests' reference implementation.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from circuits import forward, hooks, models, patching
from circuits.engines.path_patching import PathPatching
from circuits.graph import LOGITS, head_name
from circuits.task import PromptBatch

Head = tuple[int, int]


# --- the reference: one pair at a time, full forward passes with hooks ---------------------------------
def caches(model: Any, batch: PromptBatch, direction: str) -> dict[str, Any]:
    """Base and source activations the per-pair loop freezes to (z per layer, MLP outputs)."""
    base, source = (batch.corrupted, batch.clean) if direction == "denoising" else (batch.clean, batch.corrupted)
    layers = range(model.cfg.n_layers)
    z = [hooks.z(model, layer) for layer in layers]
    mlp = [] if model.cfg.attn_only else [hooks.mlp_out(model, layer) for layer in layers]
    _, base_cache = patching.run_with_cache(model, base, z + mlp, batch.position)
    _, source_cache = patching.run_with_cache(model, source, z, batch.position)
    return {"base": base, "base_cache": base_cache, "source_cache": source_cache}


def path_metric(model: Any, task: Any, batch: PromptBatch, senders: Sequence[Head], receiver: Union[Head, str],
                inputs: Sequence[str] = ("q", "k", "v"), direction: str = "denoising", freeze_mlps: bool = False,
                positions: Optional[Sequence[int]] = None, cached: Optional[dict[str, Any]] = None) -> float:
    """The patched metric mean of one path (all `senders` at once) -> `receiver`, computed literally."""
    cached = cached or caches(model, batch, direction)
    base, base_cache, source_cache = cached["base"], cached["base_cache"], cached["source_cache"]
    cfg = model.cfg

    def frozen(layer: int):
        def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
            out = base_cache[hooks.z(model, layer)].clone()
            for l, h in senders:
                if l == layer:
                    source = source_cache[hooks.z(model, layer)][:, :, h]
                    if positions is None:
                        out[:, :, h] = source
                    else:
                        out[:, positions, h] = source[:, positions]
            return out
        return hook

    # Step 3: every head frozen at base except the senders; capture the receiver's q/k/v.
    step3: dict[str, torch.Tensor] = {}
    fwd = [(hooks.z(model, layer), frozen(layer)) for layer in range(cfg.n_layers)]
    if freeze_mlps and not cfg.attn_only:
        fwd += [(hooks.mlp_out(model, l), (lambda t, hook, l=l: base_cache[hooks.mlp_out(model, l)]))
                for l in range(cfg.n_layers)]
    if receiver != LOGITS:
        layer = receiver[0]
        names = {"q": hooks.q(model, layer), "k": hooks.k(model, layer), "v": hooks.v(model, layer)}
        fwd += [(names[i], (lambda t, hook, i=i: step3.__setitem__(i, t.detach().clone()))) for i in inputs]
    with hooks.attached(model, fwd):
        out = forward.logits(model, base, batch.position)
    if receiver == LOGITS:
        return patching.metric_mean(task, out, batch).item()

    # Step 4: base run with only the receiver's q/k/v replaced. GQA: query head h reads KV head
    # h // (n_heads / n_kv_heads); replacing that KV head changes its whole group, so the other query
    # heads of layer `layer` are reset to their base outputs: only head h sees the patched k/v.
    layer, head = receiver
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    group = head // (cfg.n_heads // n_kv)

    def patch(which: str):
        def hook(t: torch.Tensor, hook: Any) -> torch.Tensor:
            t = t.clone()
            index = head if which == "q" else group
            t[:, :, index] = step3[which][:, :, index]
            return t
        return hook

    def only_receiver(z: torch.Tensor, hook: Any) -> torch.Tensor:
        out = base_cache[hooks.z(model, layer)].clone()
        out[:, :, head] = z[:, :, head]
        return out

    fwd = [(names[i], patch(i)) for i in inputs] + [(hooks.z(model, layer), only_receiver)]
    with hooks.attached(model, fwd):
        out = forward.logits(model, base, batch.position)
    return patching.metric_mean(task, out, batch).item()


def pair_loop(model: Any, task: Any, batch: PromptBatch, engine: PathPatching) -> dict[tuple[str, str], dict[str, float]]:
    """Every edge `engine` computes, one (sender, receiver, input combination) at a time."""
    with torch.no_grad():
        batch = patching.trimmed(batch, causal=model.cfg.attention_dir == "causal")
        cached = caches(model, batch, engine.direction)
        senders, receivers, to_logits = engine.plan(model)
        combos = engine._combos()
        edges: dict[tuple[str, str], dict[str, float]] = {}
        kwargs = dict(direction=engine.direction, freeze_mlps=engine.freeze_mlps, positions=engine.positions,
                      cached=cached)
        for sender in senders:
            for receiver in receivers:
                if receiver[0] > sender[0]:
                    key = (head_name(*sender), head_name(*receiver))
                    edges[key] = {"+".join(c): path_metric(model, task, batch, [sender], receiver, c, **kwargs)
                                  for c in combos}
            if to_logits:
                edges[(head_name(*sender), LOGITS)] = {"": path_metric(model, task, batch, [sender], LOGITS, **kwargs)}
        return edges


def max_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise AssertionError(f"different edges: {sorted(set(a) ^ set(b))[:5]}")
    return max(abs(a[e][c] - b[e][c]) for e in a for c in a[e])


# --- a task for the compute-bound case --------------------------------------------------------------
@dataclass(frozen=True)
class RandomTokens:
    """Random clean and corrupted prompts, read out at the last position; metric: logit(answer) - logit(foil)."""

    name: str = "random_tokens"
    seq_len: int = 64

    def batch(self, model: Any, n: int, seed: int) -> PromptBatch:
        g = torch.Generator().manual_seed(seed)
        vocab = model.cfg.d_vocab
        tokens = torch.randint(vocab, (2, n, self.seq_len), generator=g)
        answers = torch.randint(vocab, (2, n), generator=g)
        return PromptBatch(clean=tokens[0], corrupted=tokens[1], answer=answers[0], foil=answers[1],
                           position=torch.full((n,), self.seq_len - 1))

    def metric(self, logits: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        rows = torch.arange(len(logits))
        return logits[rows, batch.answer] - logits[rows, batch.foil]

    def default_model(self) -> Any:
        return models.toy(n_layers=4, n_heads=8, d_model=128, d_vocab=256, n_ctx=64, seed=0)


# --- timing ---------------------------------------------------------------------------------------------
def floor_time(model: Any, task: Any, batch: PromptBatch, engine: PathPatching) -> float:
    """Seconds for the work no exact method can skip: each edge's own downstream recompute (block L's
    rest and every later block, for every (sender, receiver, combination) copy), stacked as the engine does."""
    with torch.no_grad():
        runs = patching.PatchRuns.prepare(model, task, batch, engine.direction)
        senders, receivers, _ = engine.plan(model)
        per_copy = patching.copies_per_pass(model, runs.batch, engine.memory_mb)
        start = time.perf_counter()
        for layer in range(model.cfg.n_layers):
            n_senders = sum(1 for s in senders if s[0] < layer)
            copies = n_senders * sum(1 for r in receivers if r[0] == layer) * len(engine._combos())
            for chunk in patching.chunks(copies, per_copy):
                runs.finish(layer, runs.base_resid[layer].new_zeros((len(chunk),) + runs.base_resid[layer].shape))
        return time.perf_counter() - start


def measure(label: str, model: Any, task: Any, n: int, engine: PathPatching, repeats: int = 1) -> dict[str, float]:
    batch = task.batch(model, n=n, seed=0)
    edge_count = len(engine.plan(model)[0])
    start = time.perf_counter()
    for _ in range(repeats):
        ours = engine.patched_metrics(model, task, batch)
    t_engine = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    loop = pair_loop(model, task, batch, engine)
    t_loop = time.perf_counter() - start
    t_floor = floor_time(model, task, batch, engine)
    diff = max_difference(ours, loop)
    values = sum(len(v) for v in ours.values())
    device = next(model.parameters()).device
    print(f"{label} on {device}: {len(ours)} edges ({values} patched values, {edge_count} senders)\n"
          f"  per-pair loop {t_loop:8.2f} s   engine {t_engine:7.3f} s   ratio {t_loop / t_engine:6.1f}x   "
          f"max |diff| {diff:.2e}\n"
          f"  unskippable downstream work {t_floor:7.3f} s: engine = {t_engine / t_floor:.2f}x that limit, "
          f"loop/limit = {t_loop / t_floor:.1f}x")
    return {"loop": t_loop, "engine": t_engine, "floor": t_floor, "diff": diff}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="a,b")
    parser.add_argument("--quick", action="store_true", help="fewer receivers, shorter prompts (about a minute)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on shared cores)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    print(f"torch CPU threads: {torch.get_num_threads()}")
    results = {}
    cases = args.cases.split(",")
    if "a" in cases:
        from tasks.induction import Induction

        task = Induction()
        model = task.default_model()
        engine = PathPatching(receivers=("L1H0", LOGITS) if args.quick else None)
        results["a"] = measure("a  induction model, 8 prompts", model, task, 8, engine, repeats=3)
    if "b" in cases:
        task = RandomTokens(seq_len=16 if args.quick else 64)
        model = task.default_model()
        engine = PathPatching(receivers=("L3H0", "L2H1", LOGITS) if args.quick else None)
        results["b"] = measure(f"b  4L x 8H d128 toy, 16 prompts of {task.seq_len}", model, task, 16, engine)
    return results


if __name__ == "__main__":
    main()
