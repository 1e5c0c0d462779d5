"""Independent references the tests compare the engines with (the benchmarks time them too).

- `tl_patched`: TransformerLens's own all-head activation patching (`transformer_lens.patching`).
- `pair_loop` / `path_metric`: path patching computed literally, one (sender, receiver, inputs) at a time,
  with hooks on full forward passes (hook names spelled here, not taken from the library).
- `edge_circuit_metric`: an edge circuit evaluated as MIB does, literally: layer by layer, each receiver's input
  rebuilt one edge at a time, each head's q/k/v read from its own block run and its attention run alone; an edge at
  a position (a token index or a span) is held at its own tokens only (`kept_tokens`, token by token).
- `RandomTokens`: a task of random clean and corrupted prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from transformer_lens import patching as tl_patching

from circuits import PromptBatch, forward, hooks, models
from circuits.engines import PathPatching
from circuits.nodes import EMBED, LOGITS
from circuits.nodes import MLP as MLPNode
from circuits.nodes import Head as HeadNode

Head = tuple[int, int]
Z, MLP_OUT = "blocks.{}.attn.hook_z", "blocks.{}.hook_mlp_out"


# --- TransformerLens's activation patching -----------------------------------------------------------------
def tl_patched(model: Any, task: Any, batch: PromptBatch, per_position: bool = False) -> torch.Tensor:
    """TransformerLens's own all-head patching (denoising: corrupted run, clean values): patched metric
    means ``[n_layers, n_heads]`` (``[n_layers, pos, n_heads]`` per position)."""
    model.eval()
    rows = torch.arange(batch.size)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return task.metric(logits[rows, batch.position], batch).mean()

    run = (tl_patching.get_act_patch_attn_head_out_by_pos if per_position
           else tl_patching.get_act_patch_attn_head_out_all_pos)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(batch.clean)
        return run(model, batch.corrupted, clean_cache, metric)


def tl_metric(model: Any, task: Any, batch: PromptBatch, tokens: torch.Tensor) -> float:
    """The metric mean of a plain ``model(tokens)`` run (no library code), read at each prompt's position."""
    with torch.no_grad():
        logits = model(tokens)
    return task.metric(logits[torch.arange(batch.size), batch.position], batch).float().mean().item()


# --- the reference: one pair at a time, full forward passes with hooks ---------------------------------
EMBED_HOOK, RESID_MID = "blocks.0.hook_resid_pre", "blocks.{}.hook_resid_mid"  # TL4's resid_mid: the MLP's input only
Sender = Union[Head, str, MLPNode]  # (layer, head), "embed" or an MLP
Receiver = Union[Head, str, MLPNode]  # (layer, head), "logits" or an MLP


def caches(model: Any, batch: PromptBatch, direction: str) -> dict[str, Any]:
    """Base and source activations the per-pair loop freezes to (z per layer, MLP outputs, the embedding)."""
    base, source = (batch.corrupted, batch.clean) if direction == "denoising" else (batch.clean, batch.corrupted)
    layers = range(model.cfg.n_layers)
    names = [Z.format(layer) for layer in layers] + [EMBED_HOOK]
    names += [] if model.cfg.attn_only else [MLP_OUT.format(layer) for layer in layers]
    return {"base": base, "base_cache": activations(model, base, names), "source_cache": activations(model, source, names)}


def activations(model: Any, inputs: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    cache: dict[str, torch.Tensor] = {}
    fwd = [(name, (lambda t, hook, name=name: cache.__setitem__(name, t.detach().clone()))) for name in names]
    with hooks.attached(model, fwd):
        forward.logits(model, inputs)
    return cache


def metric_mean(task: Any, logits: torch.Tensor, batch: PromptBatch) -> float:
    return task.metric(logits, batch).float().mean().item()


def path_metric(model: Any, task: Any, batch: PromptBatch, senders: Sequence[Sender], receiver: Receiver,
                inputs: Sequence[str] = ("q", "k", "v"), direction: str = "denoising", freeze_mlps: bool = False,
                positions: Union[Sequence[int], torch.Tensor, None] = None,
                cached: Optional[dict[str, Any]] = None) -> float:
    """The patched metric mean of one path (all `senders` at once) -> `receiver`, computed literally."""
    return path_metrics(model, task, batch, senders, receiver, [tuple(inputs)], direction, freeze_mlps, positions,
                        cached)[tuple(inputs)]


def path_metrics(model: Any, task: Any, batch: PromptBatch, senders: Sequence[Sender], receiver: Receiver,
                 combos: Sequence[tuple[str, ...]], direction: str = "denoising", freeze_mlps: bool = False,
                 positions: Union[Sequence[int], torch.Tensor, None] = None,
                 cached: Optional[dict[str, Any]] = None) -> dict[tuple[str, ...], float]:
    """`path_metric` for each input combination of a head receiver (one step 3 for all); {(): value} otherwise.
    `positions`: where the senders are patched (token indices, or a mask ``[batch, pos]`` per prompt; None: all)."""
    inputs = sorted({i for combo in combos for i in combo})
    cached = cached or caches(model, batch, direction)
    base, base_cache, source_cache = cached["base"], cached["base_cache"], cached["source_cache"]
    cfg = model.cfg
    # where the senders take their source values: [batch, pos], every token, the given positions, or a mask per prompt
    where = torch.ones(base.shape[:2], dtype=torch.bool)
    if isinstance(positions, torch.Tensor):
        where = positions.bool().cpu()
    elif positions is not None:
        where = torch.zeros_like(where)
        where[:, [p for p in positions if p < base.shape[1]]] = True

    def mixed(base_value: torch.Tensor, source_value: torch.Tensor) -> torch.Tensor:
        mask = where.to(base_value.device).view(*where.shape, *[1] * (base_value.ndim - 2))
        return torch.where(mask, source_value, base_value)

    def with_source(name: str):
        def hook(t: torch.Tensor, hook: Any) -> torch.Tensor:
            return mixed(base_cache[name], source_cache[name])
        return hook

    def frozen(layer: int):
        def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
            out = base_cache[Z.format(layer)].clone()
            for sender in senders:
                if isinstance(sender, tuple) and sender[0] == layer:
                    h = sender[1]
                    out[:, :, h] = mixed(out[:, :, h], source_cache[Z.format(layer)][:, :, h])
            return out
        return hook

    # Step 3: every head frozen at base except the head senders; the embedding and MLP senders take their source
    # values; capture the receiver's q/k/v (or an MLP receiver's input).
    step3: dict[str, torch.Tensor] = {}
    fwd = [(Z.format(layer), frozen(layer)) for layer in range(cfg.n_layers)]
    fwd += [(EMBED_HOOK, with_source(EMBED_HOOK))] if EMBED in senders else []
    mlp_senders = {s.layer for s in senders if isinstance(s, MLPNode)}
    fwd += [(MLP_OUT.format(l), with_source(MLP_OUT.format(l))) for l in sorted(mlp_senders)]
    if freeze_mlps and not cfg.attn_only:
        fwd += [(MLP_OUT.format(l), (lambda t, hook, l=l: base_cache[MLP_OUT.format(l)]))
                for l in range(cfg.n_layers) if l not in mlp_senders]
    if isinstance(receiver, MLPNode):
        mid = RESID_MID.format(receiver.layer)
        fwd += [(mid, (lambda t, hook: step3.__setitem__("mid", t.detach().clone())))]
    elif receiver != LOGITS:
        layer = receiver[0]
        names = {i: f"blocks.{layer}.attn.hook_{i}" for i in "qkv"}
        fwd += [(names[i], (lambda t, hook, i=i: step3.__setitem__(i, t.detach().clone()))) for i in inputs]
    with hooks.attached(model, fwd):
        out = forward.logits(model, base, batch.position)
    if receiver == LOGITS:
        return {combo: metric_mean(task, out, batch) for combo in combos}
    if isinstance(receiver, MLPNode):  # step 4: the base run with only the MLP's input replaced
        with hooks.attached(model, [(mid, lambda t, hook: step3["mid"])]):
            value = metric_mean(task, forward.logits(model, base, batch.position), batch)
            return {combo: value for combo in combos}

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
        out = base_cache[Z.format(layer)].clone()
        out[:, :, head] = z[:, :, head]
        return out

    values = {}
    for combo in combos:
        fwd = [(names[i], patch(i)) for i in combo] + [(Z.format(layer), only_receiver)]
        with hooks.attached(model, fwd):
            values[combo] = metric_mean(task, forward.logits(model, base, batch.position), batch)
    return values


def _reference_node(node: Any) -> Union[Sender, Receiver]:
    """A library node as the loop spells it: (layer, head), "embed", or the MLP itself."""
    return (node.layer, node.head) if isinstance(node, HeadNode) else EMBED if node.kind == "embed" else node


def _order(node: Any) -> int:
    """When a node writes or reads, written here again: embed first, then per layer its heads, then its MLP."""
    if node == EMBED:
        return -1
    return 2 * node[0] if isinstance(node, tuple) else 2 * node.layer + 1


def _name(node: Any) -> str:
    return HeadNode(*node).name if isinstance(node, tuple) else EMBED if node == EMBED else node.name


def pair_loop(model: Any, task: Any, batch: PromptBatch, engine: PathPatching) -> dict[tuple[str, str], dict[str, float]]:
    """Every edge `engine` computes, one (sender, receiver, input combination) at a time."""
    with torch.no_grad():
        cached = caches(model, batch, engine.direction)
        senders, receivers, to_logits = engine.plan(model)
        senders, receivers = [_reference_node(s) for s in senders], [_reference_node(r) for r in receivers]
        joint = tuple(engine.inputs)  # every input together, and each alone when asked for and not the same
        combos = ([(i,) for i in joint] if engine.per_input and len(joint) > 1 else []) + [joint]
        edges: dict[tuple[str, str], dict[str, float]] = {}
        kwargs = dict(direction=engine.direction, freeze_mlps=engine.freeze_mlps, positions=engine.positions,
                      cached=cached)
        for sender in senders:
            for receiver in receivers:
                if _order(receiver) > _order(sender):
                    key = (_name(sender), _name(receiver))
                    if isinstance(receiver, MLPNode):
                        edges[key] = {"": path_metric(model, task, batch, [sender], receiver, **kwargs)}
                    else:
                        values = path_metrics(model, task, batch, [sender], receiver, combos, **kwargs)
                        edges[key] = {"+".join(c): values[c] for c in combos}
            if to_logits:
                edges[(_name(sender), LOGITS)] = {"": path_metric(model, task, batch, [sender], LOGITS, **kwargs)}
        return edges


def max_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise AssertionError(f"different edges: {sorted(set(a) ^ set(b))[:5]}")
    return max(abs(a[e][c] - b[e][c]) for e in a for c in a[e])


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


def zero_head(head: int) -> Any:
    """A TransformerLens hook on ``hook_z`` that zeroes one head's output (the literal ablation the clamp tests
    compare against)."""
    def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0
        return z
    return hook


# --- edge circuits, evaluated literally ------------------------------------------------------------------------
def sender_values(model: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each sender's output on `tokens` by name: the token embedding, each head's z · W_O, each MLP's output."""
    cfg = model.cfg
    mlps = [] if cfg.attn_only else [MLP_OUT.format(l) for l in range(cfg.n_layers)]
    cache = activations(model, tokens, ["hook_embed"] + [Z.format(l) for l in range(cfg.n_layers)] + mlps)
    out = {"embed": cache["hook_embed"]}
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            out[HeadNode(l, h).name] = cache[Z.format(l)][:, :, h] @ model.blocks[l].attn.W_O[h]
        if not cfg.attn_only:
            out[f"M{l}"] = cache[MLP_OUT.format(l)]
    return out


def literal_ablations(model: Any, batch: PromptBatch, ablation: str,
                      reference: Optional[PromptBatch] = None) -> dict[str, torch.Tensor]:
    """What each sender carries on an edge outside the circuit, computed prompt by prompt and position by position."""
    clean = sender_values(model, batch.clean)
    if ablation == "zero":
        return {name: torch.zeros_like(value) for name, value in clean.items()}
    if ablation == "patching":
        return sender_values(model, batch.corrupted)
    values = sender_values(model, reference.clean)
    length = batch.clean.shape[1]
    out = {}
    for name, value in values.items():
        seen = [(i, p) for i in range(reference.size) for p in range(reference.clean.shape[1])
                if p <= int(reference.position[i])]
        overall = sum(value[i, p] for i, p in seen) / len(seen)
        if ablation == "mean":
            out[name] = overall.expand(batch.size, length, -1)
            continue
        per_position = []
        for p in range(length):
            here = [value[i, p] for i, q in seen if q == p]
            per_position.append(sum(here) / len(here) if here else overall)
        out[name] = torch.stack(per_position).expand(batch.size, -1, -1)
    return out


def edge_circuit_metric(model: Any, task: Any, batch: PromptBatch, circuit: Any,
                        ablated: dict[str, torch.Tensor]) -> float:
    """The metric mean of `circuit` (a set of `circuits.Edge`) on `batch`'s clean prompts, every edge outside it
    carrying its sender's `ablated` output: each receiver's input is the residual stream of this pass minus every
    earlier sender's output in this pass plus, edge by edge, that output (in the circuit) or the ablated one."""
    cfg = model.cfg
    group = cfg.n_heads // (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    kept = kept_tokens(circuit, batch)
    outputs: dict[str, torch.Tensor] = {}

    def rebuilt(resid: torch.Tensor, receiver: str, which: Optional[str] = None) -> torch.Tensor:
        x = resid.clone()
        for sender, out in outputs.items():
            here = kept.get((sender, receiver, which))
            if here is None:  # outside the circuit at every token
                x = x - out + ablated[sender]
            else:
                x = x - out + torch.where(here[:, :, None], out, ablated[sender].expand_as(out))
        return x

    def captured(x: torch.Tensor, layer: int, hook_name: str, replace: Optional[dict] = None) -> torch.Tensor:
        found = {}
        fwd = [(name, (lambda t, hook, value=value: value)) for name, value in (replace or {}).items()]
        fwd.append((hook_name, lambda t, hook: found.setdefault("x", t.detach().clone())))
        with hooks.attached(model, fwd):
            forward.run_blocks(model, x, layer, layer + 1)
        return found["x"]

    resid = forward.embed(model, batch.clean)
    outputs["embed"] = sender_values(model, batch.clean)["embed"]
    for layer in range(cfg.n_layers):
        block, qkv = model.blocks[layer], {i: f"blocks.{layer}.attn.hook_{i}" for i in "qkv"}
        base = {i: captured(resid, layer, qkv[i]) for i in "qkv"}
        heads = {}
        for h in range(cfg.n_heads):
            own = {i: captured(rebuilt(resid, HeadNode(layer, h).name, i), layer, qkv[i]) for i in "qkv"}
            replace = {}
            for i in "qkv":
                slot = h if i == "q" else h // group
                value = base[i].clone()
                value[:, :, slot] = own[i][:, :, slot]
                replace[qkv[i]] = value
            z = captured(resid, layer, f"blocks.{layer}.attn.hook_z", replace)
            heads[HeadNode(layer, h).name] = z[:, :, h] @ block.attn.W_O[h]
        bias = getattr(block.attn, "b_O", None)
        resid = resid + sum(heads.values()) + (0 if bias is None else bias)
        outputs.update(heads)
        if not cfg.attn_only:
            mlp_out = block.mlp(block.ln2(rebuilt(resid, f"M{layer}")))
            outputs[f"M{layer}"] = mlp_out
            resid = resid + mlp_out
    logits = forward.unembed(model, rebuilt(resid, LOGITS), batch.position)
    return metric_mean(task, logits, batch)


def kept_tokens(circuit: Any, batch: PromptBatch) -> dict[tuple, torch.Tensor]:
    """Per (sender, receiver, input) of `circuit`, ``[batch, pos]``: True at the tokens where the circuit holds the
    edge, prompt by prompt and token by token: a plain edge at every token, one at a token index there, one at a span
    at the tokens whose span (``batch.span_names[batch.spans[i, p]]``) it names."""
    size, length = batch.clean.shape[:2]
    out: dict[tuple, torch.Tensor] = {}
    for edge in circuit:
        key = (edge.sender.name, edge.receiver.name, edge.input)
        here = out.setdefault(key, torch.zeros(size, length, dtype=torch.bool))
        for i in range(size):
            for p in range(length):
                if edge.position is None or edge.position == p or (
                        batch.spans is not None and batch.span_names[int(batch.spans[i, p])] == edge.position):
                    here[i, p] = True
    return out


def random_edge_graph(model_or_cfg: Any, generator: torch.Generator, meta: dict) -> "HeadGraph":
    """Every edge of a model (or config) scored at random from `generator`, head receivers' q/k/v apart, in the
    shape edge attribution writes (a per-input `score_q/k/v` and their sum on one networkx edge)."""
    from circuits import HeadGraph, nodes

    cfg = nodes.config_of(model_or_cfg)
    graph = HeadGraph(n_layers=cfg.n_layers, n_heads=cfg.n_heads, meta=meta)
    pairs: dict = {}
    for edge in nodes.all_edges(model_or_cfg):
        pairs.setdefault((edge.sender.name, edge.receiver.name), {})[edge.input] = float(torch.randn(1, generator=generator))
    for (u, v), scores in pairs.items():
        if None in scores:
            graph.add_edge(u, v, scores[None], effect="direct")
        else:
            graph.add_edge(u, v, sum(scores.values()), effect="direct", inputs="q+k+v",
                           **{f"score_{i}": s for i, s in scores.items()})
    return graph
